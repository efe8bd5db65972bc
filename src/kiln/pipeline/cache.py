"""Stage outputs keyed by a hash of their inputs, so a re-run skips what is already done.

Each stage writes into ``<work dir>/<stage>-<key>/`` and, once its output is complete, a
``stage.json`` recording the key. A folder without that file is an interrupted attempt: the
stage runs again there (training resumes from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.errors import PackageError
from kiln.runtime.package import package_digest, read_manifest, write_json_atomic

MARKER_NAME = "stage.json"
# Hex characters of the key in folder names: enough to never collide within one recipe's runs.
KEY_CHARS = 16
_STAGE_DIR = re.compile(rf"^[a-z][a-z-]*-[0-9a-f]{{{KEY_CHARS}}}$")


def stage_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """sha256 over the stage name and its inputs as canonical JSON."""
    canonical = json.dumps({"stage": stage, **inputs}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def stage_dir(work_dir: Path, stage: str, key: str) -> Path:
    """The folder of a stage's output for this key."""
    return work_dir / f"{stage}-{key[:KEY_CHARS]}"


def is_stage_dir(folder: Path) -> bool:
    """Whether ``folder``'s name is that of a stage output folder."""
    return _STAGE_DIR.match(folder.name) is not None


def completed(folder: Path, key: str) -> dict[str, Any] | None:
    """The marker of a finished stage output for ``key``, or None if there is none."""
    marker = folder / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == key else None


def mark_completed(folder: Path, key: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Record that ``folder`` holds the complete output for ``key``."""
    full = {"key": key, **record}
    write_json_atomic(folder / MARKER_NAME, full)
    return full


def intact_package(path: Path, digest: str) -> bool:
    """Whether ``path`` is an unaltered package whose digest is ``digest``."""
    try:
        return package_digest(read_manifest(path, verify=True)) == digest
    except PackageError:
        return False
