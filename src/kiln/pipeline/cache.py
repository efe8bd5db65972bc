"""Stage outputs keyed by a hash of their inputs, so a re-run skips what is already done.

Each stage writes into ``<work dir>/<stage>-<key>/`` and, once its output is complete, a
``stage.json`` recording the key. A folder without that file is an interrupted attempt: the
stage runs again there (training resumes from its last checkpoint).

The key holds the stage's inputs and the code that runs it: Kiln's version and a digest of every
file of the installed ``kiln`` package. The whole package rather than one stage's modules,
because stages import lazily (inside functions), so which modules a stage runs is only known
once it has run; after any change to Kiln's code, ``kiln run`` makes every package again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import PackageError
from kiln.runtime.package import package_digest, read_manifest, write_json_atomic

MARKER_NAME = "stage.json"
# Hex characters of the key in folder names: enough to never collide within one recipe's runs.
KEY_CHARS = 16
_STAGE_DIR = re.compile(rf"^[a-z][a-z-]*-[0-9a-f]{{{KEY_CHARS}}}$")


@dataclass(frozen=True)
class StageOutput:
    """A stage's complete output for one key: found from an earlier run, or just made."""

    folder: Path  # the stage's output folder
    record: dict[str, Any]  # what the stage recorded when it completed, with its key
    is_reused: bool  # found complete from an earlier run with the same inputs and code


def reuse_or_make(
    work_dir: Path,
    stage: str,
    inputs: Mapping[str, Any],
    make: Callable[[Path], Mapping[str, Any]],
    *,
    is_usable: Callable[[Path, Mapping[str, Any]], bool] | None = None,
) -> StageOutput:
    """The output of ``stage`` for ``inputs``: an earlier complete one, else ``make``'s.

    Args:
        work_dir: the recipe's run folder, holding one folder per stage output.
        stage: the stage name, e.g. ``train``, ``onnx``, ``eval``.
        inputs: everything that decides what the stage makes (recipe sections, parent digest).
        make: runs the stage into the folder it is given and returns what to record.
        is_usable: whether an earlier complete output is still intact (default: always).
    """
    key = stage_key(stage, inputs)
    folder = stage_dir(work_dir, stage, key)
    done = completed(folder, key)
    if done is not None and (is_usable is None or is_usable(folder, done)):
        return StageOutput(folder, done, is_reused=True)
    record = make(folder)
    return StageOutput(folder, mark_completed(folder, key, record), is_reused=False)


def stage_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """sha256 over the stage name, its inputs and Kiln's version and code, as canonical JSON."""
    import kiln

    code = {"kiln_version": kiln.__version__, "kiln_code": code_digest()}
    canonical = json.dumps({"stage": stage, **inputs, **code}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 over every file of the installed ``kiln`` package (computed once per process)."""
    import kiln

    return tree_digest(Path(kiln.__file__).parent)


def tree_digest(root: Path) -> str:
    """sha256 over the relative path and bytes of every file under ``root``, bytecode left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        if path.suffix in (".pyc", ".pyo"):
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


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
