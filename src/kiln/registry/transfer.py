"""Export models (metadata + packages) to a folder or ``.tar.gz`` and import them elsewhere.

Layout: ``registry.json`` and ``packages/<digest>/``. Import registers each version again
(numbers are allocated by the target registry), links lineage, recreates runs and aliases, and
skips versions whose package the model already holds, so importing twice changes nothing. An
export archive is unpacked under the same ``ArchiveLimits`` and checks as an HTTP upload, into a
temporary folder, before anything is registered.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from kiln.registry.archives import ArchiveLimits, ArchiveTooLargeError, BadArchiveError, unpack_archive
from kiln.registry.client import Registry
from kiln.registry.errors import RegistryError

FORMAT_VERSION = 1
INDEX_NAME = "registry.json"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def export_models(registry: Registry, names: list[str], dest: Path) -> int:
    """Write ``names`` (every version) to ``dest``; return the number of versions written."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export" if _is_archive(dest) else dest
        folder.mkdir(parents=True, exist_ok=False)
        models, count = [], 0
        for name in names:
            model = registry.store.get_model(name)
            versions = []
            for version in registry.list_versions(name):
                package = registry.resolve(version.ref)
                shutil.copytree(
                    package, folder / "packages" / version.package_digest, dirs_exist_ok=True
                )
                run = registry.get_run(version.run_id) if version.run_id else None
                versions.append(
                    {
                        "version": version.version,
                        "package_digest": version.package_digest,
                        "metrics": version.metrics,
                        "tags": version.tags,
                        "description": version.description,
                        "created_by": version.created_by,
                        "run": _run_dict(run) if run else None,
                        "parents": [
                            dataclasses.asdict(e)
                            for e in registry.store.parent_edges(name, version.version)
                        ],
                    }
                )
                count += 1
            aliases = {
                a: v["version"]
                for v in versions
                for a in registry.get_version(f"{name}@{v['version']}").aliases
            }
            models.append(
                {"name": model.name, "task": model.task, "versions": versions, "aliases": aliases}
            )
        index = {"kiln_registry_export": FORMAT_VERSION, "models": models}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, default=str))
        if _is_archive(dest):
            with tarfile.open(dest, "w:gz") as tar:
                tar.add(folder, arcname=".")
    return count


def import_models(registry: Registry, source: Path, *, limits: ArchiveLimits | None = None) -> list[str]:
    """Register every version in an export; return the references created.

    Args:
        source: an export folder, or a ``.tar.gz`` unpacked within ``limits`` (``ArchiveLimits()``
            when None).

    Raises:
        ArchiveTooLargeError: the archive is over one of ``limits``; nothing is registered.
        BadArchiveError: the archive is not a ``.tar.gz`` of plain files and folders inside it.
        RegistryError: ``source`` is not a Kiln registry export.
    """
    if not source.exists():
        raise RegistryError(f"{source}: no such export folder or archive")
    with tempfile.TemporaryDirectory(prefix="kiln-import-") as tmp:
        folder = source
        if _is_archive(source):
            folder = Path(tmp) / "export"
            try:
                unpack_archive(source, folder, limits or ArchiveLimits())
            except (ArchiveTooLargeError, BadArchiveError) as exc:
                raise type(exc)(f"{source}: {exc}") from exc
        index_path = folder / INDEX_NAME
        if not index_path.is_file():
            raise RegistryError(f"{source}: not a Kiln registry export (no {INDEX_NAME})")
        index = json.loads(index_path.read_text())
        if index.get("kiln_registry_export") != FORMAT_VERSION:
            raise RegistryError(f"{source}: unsupported export format")
        created: list[str] = []
        for model in index["models"]:
            created += _import_model(registry, folder, model)
        return created


def _import_model(registry: Registry, folder: Path, model: dict[str, Any]) -> list[str]:
    name, created = model["name"], []
    existing = {v.package_digest: v for v in _versions_or_empty(registry, name)}
    new_ref: dict[str, str] = {}
    for entry in model["versions"]:
        old_ref = f"{name}@{entry['version']}"
        # The digest names the package's folder in the export: anything else could lead outside it.
        if not _DIGEST.match(str(entry["package_digest"])):
            raise RegistryError(
                f"{folder / INDEX_NAME}: {old_ref} has package_digest {entry['package_digest']!r}, "
                "expected 64 lowercase hex characters"
            )
        if entry["package_digest"] in existing:
            new_ref[old_ref] = existing[entry["package_digest"]].ref
            continue
        run = None
        if entry["run"]:
            r = entry["run"]
            run = registry.start_run(
                name=r["name"],
                recipe=r["recipe"],
                data_fingerprint=r["data_fingerprint"],
                code_version=r["code_version"],
                params=r["params"],
            )
        # A parent inside the export maps to its new number; others are found by the
        # manifest's parent digest, as at first registration.
        parents = entry["parents"]
        parent = new_ref.get(parents[0]["parent"] or "") if parents else None
        version = registry.register(
            folder / "packages" / entry["package_digest"],
            name=name,
            run=run,
            metrics=entry["metrics"],
            tags=entry["tags"],
            description=entry["description"],
            created_by=entry["created_by"],
            parent=parent,
        )
        new_ref[old_ref] = version.ref
        existing[version.package_digest] = version
        created.append(version.ref)
    for alias, number in model["aliases"].items():
        target = new_ref.get(f"{name}@{number}")
        if target:
            registry.set_alias(name, alias, int(target.split("@")[1]))
    return created


def _versions_or_empty(registry: Registry, name: str) -> list[Any]:
    try:
        return registry.list_versions(name)
    except RegistryError:
        return []


def _run_dict(run: Any) -> dict[str, Any]:
    return {
        "name": run.name,
        "recipe": run.recipe,
        "data_fingerprint": run.data_fingerprint,
        "code_version": run.code_version,
        "params": run.params,
    }
