"""File checksums: packages (``kiln.runtime``) and installed encoders (``kiln.data``) check files alike."""

from __future__ import annotations

import hashlib
from pathlib import Path

_HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
