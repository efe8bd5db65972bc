"""What ``--register NAME`` does for the stage commands, and package references on the CLI.

A package argument is a folder or a registry reference (``name@3``, ``name@production``);
registering is idempotent (a package already registered under the name is found again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REFERENCE_HELP = "Model package folder, or a registry reference name@version / name@alias"


def resolve_package(ref: str) -> tuple[Path, str | None]:
    """The package folder ``ref`` names and, for a registry reference, its ``name@version``.

    Raises:
        BadReferenceError: neither a folder nor a reference. NotFoundError: unknown reference.
    """
    path = Path(ref)
    if path.is_dir():
        return path, None
    from kiln.registry import Registry, resolve_reference

    with Registry() as registry:
        folder = resolve_reference(ref, registry=registry)
        return folder, registry.get_version(ref).ref


def register_trained(package: Path, *, name: str, metrics_log: Path) -> str:
    """Register a trained package with a run holding its recipe and training metric series."""
    from kiln.registry import Registry
    from kiln.registry.recording import find_version, log_series, record_version, start_recipe_run
    from kiln.runtime.package import read_manifest

    manifest = read_manifest(package)
    with Registry() as registry:
        found = find_version(registry, name, package)
        if found is not None:
            return found.ref
        run = start_recipe_run(
            registry, manifest.get("recipe") or {}, data_fingerprint=str(manifest.get("data_fingerprint") or "")
        )
        try:
            log_series(registry, run, metrics_log)
            version, _ = record_version(registry, package, name=name, run=run)
        except BaseException:
            registry.finish_run(run, status="failed")
            raise
        registry.finish_run(run)
        return version.ref


def register_compressed(
    packages: Sequence[Path], *, name: str, source_ref: str | None, settings: Mapping[str, Any]
) -> list[str]:
    """Register each compressed package with a run; each one's parent is the one before it
    (the first one's is ``source_ref``, or the source package found by its digest)."""
    from kiln.registry import Registry
    from kiln.registry.recording import code_version, record_version
    from kiln.runtime.package import read_manifest

    if not packages:
        return []
    first = read_manifest(packages[0])
    refs: list[str] = []
    with Registry() as registry:
        run = registry.start_run(
            name=f"compress {name}",
            recipe={"compress": dict(settings)},
            data_fingerprint=str(first.get("data_fingerprint") or ""),
            code_version=code_version(),
            params={"compress.steps": ",".join(read_manifest(p)["lineage"]["transformation"] for p in packages)},
        )
        parent = source_ref
        try:
            for package in packages:
                version, _ = record_version(registry, package, name=name, run=run, parent=parent)
                refs.append(version.ref)
                parent = version.ref
        except BaseException:
            registry.finish_run(run, status="failed")
            raise
        registry.finish_run(run)
    return refs


def register_evaluated(package: Path, *, name: str, metrics: Mapping[str, float]) -> str:
    """Record evaluation metrics on the version holding ``package`` (registering it if needed)."""
    from kiln.registry import Registry
    from kiln.registry.recording import record_version

    with Registry() as registry:
        version, _ = record_version(registry, package, name=name, metrics=metrics)
        return version.ref
