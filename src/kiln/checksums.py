"""File checksums: packages (``kiln.runtime``), installed encoders (``kiln.data``) and converted
pretrained models (``kiln.runtime``) check files alike."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

_HASH_CHUNK_BYTES = 1 << 20

FileStamp = tuple[str, int, int]  # file name, size in bytes, modification time in ns


class FileMismatch(Exception):
    """A checked file that is missing, unreadable or has another sha256; callers say what to do."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(folder: Path, expected: Mapping[str, str]) -> None:
    """Check each named file in ``folder`` against its expected sha256.

    Raises:
        FileMismatch: "cannot read PATH (reason)" or "FILE has sha256 X, expected Y".
    """
    for file, digest_expected in expected.items():
        try:
            digest = sha256_file(folder / file)
        except OSError as exc:
            raise FileMismatch(f"cannot read {folder / file} ({exc})") from exc
        if digest != digest_expected:
            raise FileMismatch(f"{file} has sha256 {digest}, expected {digest_expected}")


def verify_sha256_once(folder: Path, expected: Mapping[str, str]) -> None:
    """``verify_sha256``, hashing again only when a file's size or modification time changed.

    Hashing a model's weights takes a fraction of a second; once per process, folder and file
    state is enough. A failed check is not remembered.
    """
    _verify_cached(str(folder), file_stamps(folder, expected), tuple(expected.items()))


def file_stamps(folder: Path, files: Iterable[str]) -> tuple[FileStamp, ...]:
    """Size and modification time of each file: a file changed since its check is checked again.

    An unreadable file gets ``-1, -1``; ``verify_sha256`` then reports it.
    """
    stamps = []
    for file in files:
        try:
            meta = (folder / file).stat()
        except OSError:
            stamps.append((file, -1, -1))
            continue
        stamps.append((file, meta.st_size, meta.st_mtime_ns))
    return tuple(stamps)


@functools.cache
def _verify_cached(folder: str, stamps: tuple[FileStamp, ...], expected: tuple[tuple[str, str], ...]) -> None:
    # ``stamps`` is part of the cache key only.
    verify_sha256(Path(folder), dict(expected))
