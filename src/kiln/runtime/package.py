"""The model package: a folder that any stage can load without the code that made it.

Layout: ``kiln.json`` (the manifest) beside the weights (``model.safetensors`` + ``config.json``,
or ``model.onnx``) and the preprocessor's files (``tokenizer.json``). The manifest lists the
sha256 of every other file; ``read_manifest(verify=True)`` refuses a package with a missing,
extra-sized or altered file, and every reading refuses a file name that could reach outside
the package folder (``check_file_names``). Packages are written into a temporary sibling folder and renamed
into place, so a crash never leaves half a package under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kiln.checksums import sha256_file
from kiln.errors import PackageError

MANIFEST_NAME = "kiln.json"
SCHEMA_VERSION = 1
# A Windows drive ("C:") or any character that is not part of a plain POSIX file name.
_UNSAFE_NAME = re.compile(r"^[A-Za-z]:|[\\\x00-\x1f]")


def hash_files(folder: Path) -> dict[str, str]:
    """Map every file under ``folder`` except the manifest (POSIX relative path) to its sha256."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def package_digest(manifest: dict[str, Any]) -> str:
    """A content hash of a whole package: sha256 over its canonical manifest (which lists file hashes)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def read_manifest(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read a package's manifest and, by default, check every listed file's hash.

    Raises:
        PackageError: no manifest, unreadable manifest, unknown schema, or a missing or
            altered file.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise PackageError(f"model package not found: {folder} is not a folder")
    if not manifest_path.is_file():
        raise PackageError(f"{folder}: not a model package (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{manifest_path}: manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise PackageError(f"{manifest_path}: unsupported schema_version {found!r}, expected {SCHEMA_VERSION}")
    if verify:
        verify_files(folder, manifest)  # checks the names too
    elif "files" in manifest:
        check_file_names(folder, _listed_files(folder, manifest))
    return manifest


def require_task(folder: Path, manifest: dict[str, Any], tasks: Sequence[str]) -> None:
    """Refuse a package whose manifest task is not one of ``tasks``.

    Raises:
        PackageError: naming the package's task and the tasks expected.
    """
    task = manifest.get("task")
    if task not in tasks:
        expected = " or ".join(repr(t) for t in tasks)
        raise PackageError(f"{folder}: a {task!r} package, expected a {expected} package")


def check_file_names(folder: Path, names: Iterable[str]) -> None:
    """Refuse any listed name that is not a plain relative path staying inside ``folder``.

    A plain name uses ``/`` between parts, has no empty, ``.`` or ``..`` part, is not
    absolute, carries no drive letter, backslash or control character, and does not pass
    through a symlink that resolves outside ``folder``.

    Raises:
        PackageError: the first offending name, quoted.
    """
    root = folder.resolve()
    for name in names:
        reason = _name_problem(name)
        if reason is None and not _stays_inside(root, folder / name):
            reason = "it is a symlink that leads outside the package folder"
        if reason is not None:
            raise PackageError(f"{folder / MANIFEST_NAME}: file name {name!r} refused: {reason}")


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "a file name must be a non-empty string"
    if name.startswith("/"):
        return "it is an absolute path"
    if _UNSAFE_NAME.search(name):
        return "it holds a drive letter, a backslash or a control character"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "it has an empty, '.' or '..' part"
    return None


def packaged_file(folder: Path, manifest: dict[str, Any], name: object) -> Path:
    """The path of ``name``, a file another manifest field points at, which ``files`` must list.

    Listed names are plain relative paths inside the package (``read_manifest`` checks them),
    so a field naming anything else is refused rather than followed.

    Raises:
        PackageError: ``name`` is not among the manifest's files.
    """
    files = manifest.get("files")
    if not isinstance(name, str) or not isinstance(files, dict) or name not in files:
        raise PackageError(f"{folder / MANIFEST_NAME}: names {name!r}, which is not one of the package's files")
    return folder / name


def _stays_inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _listed_files(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise PackageError(f"{folder / MANIFEST_NAME}: manifest lists no files")
    return files


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Check that each file in ``manifest["files"]`` exists inside ``folder`` with the recorded sha256."""
    files = _listed_files(folder, manifest)
    check_file_names(folder, files)
    for rel, expected in files.items():
        target = folder / rel
        if not target.is_file():
            raise PackageError(f"{folder}: file {rel} listed in the manifest is missing")
        actual = sha256_file(target)
        if actual != expected:
            raise PackageError(
                f"{folder}: file {rel} was altered (sha256 {actual[:12]}..., manifest says {expected[:12]}...)"
            )


@contextlib.contextmanager
def staged_package(dest: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success, ``finalize_package`` must have written it.

    The staging folder sits beside ``dest`` (same filesystem, so the final rename is atomic)
    and is removed if the block raises, so nothing half-written is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield staging
        if not (staging / MANIFEST_NAME).is_file():
            raise RuntimeError("staged package was not finalized (no manifest written)")
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finalize_package(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash the staged files, add schema/version/file list to ``manifest`` and write it."""
    from kiln.version import __version__

    full = dict(manifest)
    full["schema_version"] = SCHEMA_VERSION
    full["kiln_version"] = __version__
    full["files"] = hash_files(staging)
    write_json_atomic(staging / MANIFEST_NAME, full)
    return full


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _swap_into_place(staging: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(staging, dest)
        return
    # A directory cannot be atomically replaced by rename; move the old one aside first so
    # that at every instant `dest` is either the complete old or the complete new package.
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
