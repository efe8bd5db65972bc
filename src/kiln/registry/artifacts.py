"""Content-addressed package storage on a local folder or any fsspec URL (``s3://...``).

A package lives at ``<root>/packages/<d[:2]>/<d>/`` where ``d`` is its ``package_digest``.
Uploads write every file and then the manifest, so an artifact without ``kiln.json`` is an
unfinished upload (a crashed registration): it is never fetched, and ``gc`` removes it.
Fetching verifies every file's sha256 and the manifest's own digest.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.registry.errors import ArtifactError
from kiln.runtime.package import MANIFEST_NAME, package_digest, read_manifest

logger = logging.getLogger(__name__)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ArtifactError(f"not a package digest (64 lowercase hex characters): {digest!r}")
    return digest


class ArtifactStore:
    """Packages by digest under ``url`` (a local folder or an fsspec URL)."""

    def __init__(
        self,
        url: str | Path,
        *,
        cache_dir: Path,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        from fsspec.core import url_to_fs

        self.url = str(url)
        self._fs, root = url_to_fs(self.url, **dict(storage_options or {}))
        self._root = root.rstrip("/")
        self._is_local = "file" in _protocols(self._fs)
        self._cache_dir = cache_dir

    def _dir(self, digest: str) -> str:
        return f"{self._root}/packages/{digest[:2]}/{_check_digest(digest)}"

    def exists(self, digest: str) -> bool:
        """Whether a complete artifact (manifest written) is stored under ``digest``."""
        self._fs.invalidate_cache()
        return bool(self._fs.exists(f"{self._dir(digest)}/{MANIFEST_NAME}"))

    def upload(self, folder: Path, digest: str) -> None:
        """Store the package in ``folder`` under ``digest``; a no-op if it is already there.

        Raises:
            ArtifactError: the upload did not leave every file in place.
        """
        if self.exists(digest):
            return
        manifest = read_manifest(folder, verify=False)
        target = self._dir(digest)
        files = sorted(manifest["files"])
        for rel in [*files, MANIFEST_NAME]:  # the manifest last: it marks the upload complete
            if self._is_local:
                self._fs.makedirs(os.path.dirname(f"{target}/{rel}"), exist_ok=True)
            self._fs.put_file(str(folder / rel), f"{target}/{rel}")
        self._fs.invalidate_cache()
        missing = [rel for rel in files if not self._fs.exists(f"{target}/{rel}")]
        if missing:
            raise ArtifactError(f"upload of {digest[:12]} to {self.url} lost files {missing}")
        logger.info("stored package %s in %s", digest[:12], self.url)

    def fetch(self, digest: str) -> Path:
        """A local folder holding the verified package ``digest``.

        Raises:
            ArtifactError: no artifact, or its manifest does not match the digest.
            PackageError: a file is missing or altered (the message names it).
        """
        if not self.exists(digest):
            raise ArtifactError(f"artifact {digest[:12]}... is missing from {self.url}")
        path = Path(self._dir(digest)) if self._is_local else self._download(digest)
        manifest = read_manifest(path, verify=True)
        actual = package_digest(manifest)
        if actual != digest:
            raise ArtifactError(
                f"{path / MANIFEST_NAME} was altered: its digest is {actual[:12]}..., "
                f"the registry recorded {digest[:12]}..."
            )
        return path

    def _download(self, digest: str) -> Path:
        dest = self._cache_dir / digest
        if (dest / MANIFEST_NAME).is_file():
            return dest
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=self._cache_dir))
        try:
            self._fs.get(f"{self._dir(digest)}/", str(staging), recursive=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def list_digests(self) -> set[str]:
        """Every digest with something stored, finished or not."""
        self._fs.invalidate_cache()
        base = f"{self._root}/packages"
        if not self._fs.exists(base):
            return set()
        found = set()
        for prefix in self._fs.ls(base, detail=False):
            for entry in self._fs.ls(prefix, detail=False):
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if _DIGEST.match(name):
                    found.add(name)
        return found

    def delete(self, digest: str) -> None:
        """Remove an artifact (and its local cached copy)."""
        self._fs.rm(self._dir(digest), recursive=True)
        shutil.rmtree(self._cache_dir / digest, ignore_errors=True)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
