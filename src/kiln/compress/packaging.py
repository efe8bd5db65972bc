"""Write a compressed package: the parent's description, new weights, lineage and metrics."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.runtime.package import finalize_package, package_digest, staged_package

# Manifest fields a child package inherits unchanged: what it predicts, how inputs are prepared
# and (text generation) its default generation settings.
INHERITED_FIELDS = (
    "name",
    "task",
    "labels",
    "input_schema",
    "preprocessing",
    "data_fingerprint",
    "recipe",
    "generation",
)


@dataclass
class ChildPackage:
    """A package being written in a staging folder; ``manifest`` is filled in by the step."""

    staging: Path
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def finalize(self) -> dict[str, Any]:
        """Hash the staged files and write the manifest (again, after metrics are added)."""
        manifest = dict(self.manifest, notes=list(self.notes)) if self.notes else self.manifest
        return finalize_package(self.staging, manifest)


def model_files(manifest: dict[str, Any]) -> set[str]:
    """The files of a package that hold the model itself (not the preprocessor)."""
    arch = manifest.get("architecture", {})
    names = {arch.get("weights"), arch.get("file")}
    if arch.get("family") == "hf":
        names.add("config.json")
    return {n for n in names if n}


@contextlib.contextmanager
def child_package(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    *,
    transformation: str,
    settings: dict[str, Any],
) -> Iterator[ChildPackage]:
    """Stage a child of ``parent``: copies its preprocessor files and records lineage.

    The step writes its model files into ``child.staging``, sets ``format``, ``precision`` and
    ``architecture`` in ``child.manifest`` and calls ``child.finalize()`` at least once; the
    folder is renamed to ``dest`` only when the block succeeds.
    """
    with staged_package(dest) as staging:
        skip = model_files(parent_manifest)
        for rel in parent_manifest["files"]:
            if rel not in skip:
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(parent / rel, target)
        manifest = child_manifest(parent, parent_manifest, transformation=transformation, settings=settings)
        yield ChildPackage(staging=staging, manifest=manifest)


def child_manifest(
    parent: Path, parent_manifest: dict[str, Any], *, transformation: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """The manifest fields a child of ``parent`` inherits, its lineage and empty metrics."""
    manifest = {k: parent_manifest[k] for k in INHERITED_FIELDS if k in parent_manifest}
    manifest["lineage"] = {
        "parent": {"path": str(parent.resolve()), "digest": package_digest(parent_manifest)},
        "transformation": transformation,
        "settings": settings,
    }
    manifest["metrics"] = {}
    return manifest
