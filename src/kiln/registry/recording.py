"""Record what a stage made: runs with their metric series, and versions found again by digest.

``record_version`` is idempotent: a package already registered under the model (same digest)
is returned as it is, so re-running a stage or a pipeline never adds a duplicate version.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.registry.client import Registry
from kiln.registry.domain import ModelVersion, Run
from kiln.runtime.package import package_digest, read_manifest

# Series names for the fields of metrics.jsonl records, by record type.
_SERIES_FIELDS = {
    "train": ("loss", "lr", "samples_per_s"),
    "eval": ("accuracy", "macro_f1", "loss"),
}
_SERIES_PREFIX = {"train": "train", "eval": "validation"}


def code_version() -> str:
    """Kiln's version, with ``git describe`` of its source tree when that is a git checkout."""
    from kiln.version import __version__

    source = Path(__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "describe", "--tags", "--always", "--dirty"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"kiln {__version__}" + (f" (git {described})" if described else "")


def metric_series(metrics_log: Path) -> list[tuple[int, dict[str, float]]]:
    """``(step, {name: value})`` points from a training ``metrics.jsonl`` (missing file: none)."""
    if not metrics_log.is_file():
        return []
    points = []
    for line in metrics_log.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        kind = record.get("type")
        if kind not in _SERIES_FIELDS:
            continue
        values = {
            f"{_SERIES_PREFIX[kind]}/{key}": float(record[key])
            for key in _SERIES_FIELDS[kind]
            if isinstance(record.get(key), int | float)
        }
        if values:
            points.append((int(record["step"]), values))
    return points


def flat_params(recipe: Mapping[str, Any], sections: tuple[str, ...] = ("model", "train")) -> dict[str, Any]:
    """Scalar settings of a resolved recipe's sections as ``section.key`` parameters."""
    params: dict[str, Any] = {}
    for section in sections:
        for key, value in (recipe.get(section) or {}).items():
            if value is None or isinstance(value, str | int | float | bool):
                params[f"{section}.{key}"] = value
    steps = (recipe.get("compress") or {}).get("steps")
    if steps:
        params["compress.steps"] = ",".join(steps)
    return params


def start_recipe_run(registry: Registry, recipe: Mapping[str, Any], *, data_fingerprint: str) -> Run:
    """A run for a resolved recipe, with its code version and parameters."""
    return registry.start_run(
        name=str(recipe.get("name") or ""),
        recipe=recipe,
        data_fingerprint=data_fingerprint,
        code_version=code_version(),
        params=flat_params(recipe),
    )


def log_series(registry: Registry, run: Run, metrics_log: Path) -> int:
    """Copy a ``metrics.jsonl`` into the run's metric series; return the number of points."""
    points = metric_series(metrics_log)
    for step, values in points:
        registry.log_metrics(run, values, step=step)
    return len(points)


def find_version(registry: Registry, name: str, package: str | Path) -> ModelVersion | None:
    """The newest version of model ``name`` holding exactly this package, if any."""
    digest = package_digest(read_manifest(package, verify=False))
    same = [v for v in registry.store.find_versions(digest) if v.model == name]
    return same[-1] if same else None


def record_version(
    registry: Registry,
    package: str | Path,
    *,
    name: str,
    run: Run | None = None,
    parent: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> tuple[ModelVersion, bool]:
    """Register ``package`` under ``name`` unless it already is; return the version and whether
    it is new. An existing version gets ``metrics`` merged into its own.
    """
    found = find_version(registry, name, package)
    if found is None:
        if parent is None:
            parent = _parent_digest(package)
        return registry.register(package, name=name, run=run, parent=parent, metrics=metrics), True
    if metrics:
        found = registry.store.update_version(found.model, found.version, metrics=metrics)
    return found, False


def _parent_digest(package: str | Path) -> str | None:
    """The parent digest a compressed package's manifest records (``{"path", "digest"}``)."""
    lineage = read_manifest(package, verify=False).get("lineage") or {}
    recorded = lineage.get("parent")
    if isinstance(recorded, Mapping) and recorded.get("digest"):
        return str(recorded["digest"])
    return None
