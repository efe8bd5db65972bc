"""Package archives over HTTP and registry export archives: received, unpacked and sent in bounded
chunks, never whole in memory.

An upload is counted while it is read and written to a file, and refused as soon as it passes
``max_upload_bytes``. Unpacking (an upload, or an export ``kiln registry import`` reads) refuses an
archive file over ``max_upload_bytes`` and, before writing anything past the limit, one that
decompresses to more than ``max_unpacked_bytes`` or holds more than ``max_archive_entries`` entries, and
any entry that is not a plain file or folder inside the folder it unpacks to. A download is a
``.tar.gz`` generated chunk by chunk from the package's files.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import ConfigError
from kiln.registry.errors import RegistryError

_CHUNK_BYTES = 1 << 20
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on one package archive uploaded, or one export archive imported."""

    # Largest compressed archive accepted (an upload's request body, or an export file), in bytes.
    max_upload_bytes: int = 2 << 30
    # Most bytes the archive may decompress to (tar headers and file contents together).
    max_unpacked_bytes: int = 8 << 30
    # Most entries (files and folders) in one archive.
    max_archive_entries: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_unpacked_bytes", "max_archive_entries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value!r}")


class ArchiveTooLargeError(RegistryError):
    """An archive over a size or entry-count limit (HTTP 413)."""


class BadArchiveError(RegistryError):
    """An archive that is not a ``.tar.gz`` of plain files and folders (HTTP 400)."""


async def receive_archive(chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int) -> int:
    """Write a request body to ``dest`` as it arrives; return its size.

    Raises:
        ArchiveTooLargeError: the body passed ``max_bytes``; reading stopped there.
    """
    size = 0
    with open(dest, "wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise ArchiveTooLargeError(f"archive larger than the limit of {max_bytes} bytes")
            out.write(chunk)
    return size


def unpack_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Unpack a ``.tar.gz`` of plain files and folders into the new folder ``dest``.

    Raises:
        ArchiveTooLargeError: over ``max_upload_bytes`` (the file), ``max_unpacked_bytes`` or
            ``max_archive_entries``.
        BadArchiveError: not a gzip tar, or an entry that is a link, a device or outside ``dest``.
    """
    size = archive.stat().st_size
    if size > limits.max_upload_bytes:
        raise ArchiveTooLargeError(
            f"archive of {size} bytes is larger than the limit of {limits.max_upload_bytes} bytes"
        )
    dest.mkdir()
    try:
        with gzip.open(archive, "rb") as raw:
            bounded = _BoundedReader(raw, limits.max_unpacked_bytes)
            with tarfile.open(fileobj=bounded, mode="r:") as tar:
                _extract_members(tar, dest, limits)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BadArchiveError(f"not a .tar.gz archive: {exc}") from exc


def _extract_members(tar: tarfile.TarFile, dest: Path, limits: ArchiveLimits) -> None:
    unpacked, count = 0, 0
    for member in tar:
        count += 1
        if count > limits.max_archive_entries:
            raise ArchiveTooLargeError(f"archive holds more than {limits.max_archive_entries} entries")
        _check_member(member)
        unpacked += member.size
        if unpacked > limits.max_unpacked_bytes:
            raise ArchiveTooLargeError(
                f"archive unpacks to more than the limit of {limits.max_unpacked_bytes} bytes "
                f"(at {member.name!r})"
            )
        tar.extract(member, dest, filter="data")


def _check_member(member: tarfile.TarInfo) -> None:
    if not (member.isreg() or member.isdir()) or member.issparse():
        raise BadArchiveError(
            f"archive entry {member.name!r} is not a plain file or folder (links and devices are refused)"
        )
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if member.name.startswith("/") or "\\" in member.name or ".." in parts:
        raise BadArchiveError(f"archive entry {member.name!r} lies outside the folder it unpacks to")


class _BoundedReader(io.RawIOBase):
    """A seekable view of a decompressing stream that refuses to go past ``limit`` bytes.

    tarfile reads a long-name or pax header whole, in one call sized by the header itself;
    checking the size before the read keeps a crafted header from filling memory.
    """

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence not in (os.SEEK_SET, os.SEEK_CUR):
            raise OSError("package archives are read from the start")
        target = offset if whence == os.SEEK_SET else self._raw.tell() + offset
        self._check(target)
        return self._raw.seek(target)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit - self._raw.tell() + 1
        self._check(self._raw.tell() + size)
        return self._raw.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _check(self, end: int) -> None:
        # tarfile asks for whole 512-byte blocks; a record's worth of slack keeps the end-of-archive
        # blocks of an archive exactly at the limit readable.
        if end > self._limit + _TAR_RECORD:
            raise ArchiveTooLargeError(
                f"archive unpacks to more than the limit of {self._limit} bytes"
            )


def iter_package_archive(folder: Path, *, compresslevel: int = 6) -> Iterator[bytes]:
    """The ``.tar.gz`` of ``folder`` (entries named ``./...``), generated in chunks of about 1 MiB.

    Only folders and regular files are included; symlinks are not followed.
    """
    compressor = zlib.compressobj(compresslevel, zlib.DEFLATED, _GZIP_WBITS)
    for data in _tar_stream(folder):
        compressed = compressor.compress(data)
        if compressed:
            yield compressed
    yield compressor.flush()


def _tar_stream(folder: Path) -> Iterator[bytes]:
    written = 0
    for path, arcname in _entries(folder):
        info = tarfile.TarInfo(arcname)
        meta = path.lstat()
        info.mtime = int(meta.st_mtime)
        info.mode = stat.S_IMODE(meta.st_mode)
        if stat.S_ISDIR(meta.st_mode):
            info.type = tarfile.DIRTYPE
        else:
            info.size = meta.st_size
        header = info.tobuf(tarfile.PAX_FORMAT)
        written += len(header)
        yield header
        if info.isreg():
            sent = 0
            with open(path, "rb") as fh:
                while sent < info.size:
                    chunk = fh.read(min(_CHUNK_BYTES, info.size - sent))
                    if not chunk:
                        raise OSError(f"{path} shrank while it was being sent")
                    sent += len(chunk)
                    yield chunk
            padding = -info.size % _TAR_BLOCK
            written += info.size + padding
            yield b"\0" * padding
    end = 2 * _TAR_BLOCK
    yield b"\0" * (end + -(written + end) % _TAR_RECORD)


def _entries(folder: Path) -> Iterator[tuple[Path, str]]:
    yield folder, "."
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in [*sorted(dirs), *sorted(files)]:
            path = base / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                continue
            yield path, "./" + path.relative_to(folder).as_posix()
