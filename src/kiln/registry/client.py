"""``Registry``: the Python API over the store and the artifact store.

``register`` uploads the package first and records the version after, so a crash leaves at most
an orphaned artifact (which ``gc`` removes), never a version without its package.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config.home import kiln_home
from kiln.registry.artifacts import ArtifactStore
from kiln.registry.domain import AliasMove, LineageEdge, Model, ModelVersion, Run
from kiln.registry.errors import BadReferenceError
from kiln.registry.references import check_model_name, is_reference, parse_reference
from kiln.registry.search import VersionPage, VersionQuery
from kiln.registry.sql_store import SqlStore
from kiln.registry.store import NewLineage, NewVersion, RegistryStore
from kiln.runtime.package import package_digest, read_manifest

ARTIFACTS_URL_ENV = "KILN_ARTIFACTS_URL"
USER_ENV = "KILN_USER"
# An upload record younger than this protects its artifact from gc (a registration in flight).
DEFAULT_GC_GRACE_S = 3600.0
_HEX_DIGEST = re.compile(r"^(sha256:)?(?P<hex>[0-9a-f]{64})$")


def current_user() -> str:
    """Who is acting: ``$KILN_USER``, else the login name."""
    try:
        return os.environ.get(USER_ENV) or getpass.getuser()
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Lineage:
    """A version's family: the edges from its root ancestor down, and the root's run."""

    focus: str  # the reference asked about, ``name@version``
    root: ModelVersion  # the oldest registered ancestor (``focus`` itself if it has no parent)
    run: Run | None  # the run that produced ``root``
    edges: tuple[LineageEdge, ...]  # every parent -> child edge below ``root``, breadth first


class Registry:
    """The model registry: versions, aliases, lineage, runs and their packages."""

    def __init__(
        self,
        url: str | None = None,
        *,
        artifacts_url: str | None = None,
        artifacts_options: Mapping[str, Any] | None = None,
        home: Path | None = None,
        store: RegistryStore | None = None,
    ) -> None:
        home = home or kiln_home()
        self.store: RegistryStore = store or SqlStore.from_url(url)
        chosen = artifacts_url or os.environ.get(ARTIFACTS_URL_ENV) or (home / "artifacts")
        self.artifacts = ArtifactStore(
            chosen, cache_dir=home / "cache", storage_options=artifacts_options
        )

    def close(self) -> None:
        """Release database connections."""
        if isinstance(self.store, SqlStore):
            self.store.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- versions ---
    def register(
        self,
        package_path: str | Path,
        *,
        name: str,
        run: Run | str | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        created_by: str | None = None,
        parent: str | None = None,
    ) -> ModelVersion:
        """Store a package and record it as the next version of model ``name``.

        Lineage comes from the manifest's ``lineage`` (``parent``: a package digest, a
        reference ``name@N`` or a package path; ``transformation``; ``settings``); ``parent``
        here overrides the manifest's. Metrics are the manifest's, updated by ``metrics``.

        Raises:
            PackageError: ``package_path`` is not a complete, unaltered package.
        """
        check_model_name(name)
        folder = Path(package_path)
        manifest = read_manifest(folder, verify=True)
        digest = package_digest(manifest)
        lineage = manifest.get("lineage") or {}
        new = NewVersion(
            model=name,
            task=str(manifest.get("task", "")),
            package_digest=digest,
            format=str(manifest.get("format", "")),
            precision=str(manifest.get("precision", "")),
            metrics={**(manifest.get("metrics") or {}), **(metrics or {})},
            tags=dict(tags or {}),
            description=description,
            created_by=created_by or current_user(),
            data_fingerprint=str(manifest.get("data_fingerprint") or ""),
            run_id=run.id if isinstance(run, Run) else run,
            parents=self._parents(name, lineage, parent),
        )
        upload_id = self.store.begin_upload(digest)
        try:
            self.artifacts.upload(folder, digest)
            return self.store.create_version(new, upload_id=upload_id)
        except BaseException:
            self.store.end_upload(upload_id)
            raise

    def _parents(
        self, name: str, lineage: Mapping[str, Any], parent: str | None
    ) -> tuple[NewLineage, ...]:
        hint = parent if parent is not None else lineage.get("parent")
        transformation = str(lineage.get("transformation") or "")
        if hint is None and not transformation:
            return ()
        found = self._find_parent(name, str(hint)) if hint else None
        return (
            NewLineage(
                parent_model=found.model if found else None,
                parent_version=found.version if found else None,
                parent_hint=str(hint or ""),
                transformation=transformation,
                settings=dict(lineage.get("settings") or {}),
            ),
        )

    def _find_parent(self, name: str, hint: str) -> ModelVersion | None:
        if is_reference(hint):
            return self.get_version(hint)
        match = _HEX_DIGEST.match(hint)
        if match:
            digest = match["hex"]
        elif Path(hint).is_dir():
            digest = package_digest(read_manifest(hint, verify=False))
        else:
            return None
        candidates = self.store.find_versions(digest)
        same_model = [v for v in candidates if v.model == name]
        chosen = same_model or candidates
        return chosen[-1] if chosen else None

    def get_version(self, ref: str) -> ModelVersion:
        """The version ``name@N``, ``name@alias`` or ``name@latest`` names."""
        parsed = parse_reference(ref)
        if parsed.version is not None:
            return self.store.get_version(parsed.model, parsed.version)
        assert parsed.alias is not None  # an alias or ``latest``
        return self.store.get_alias(parsed.model, parsed.alias)

    def resolve(self, ref: str) -> Path:
        """A local folder holding the verified package ``ref`` names.

        Raises:
            PackageError: a file of the stored package was altered (the message names it).
        """
        return self.artifacts.fetch(self.get_version(ref).package_digest)

    def list_models(self) -> list[Model]:
        """Every model."""
        return self.store.list_models()

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first."""
        return self.store.list_versions(name)

    def search(self, query: VersionQuery | None = None) -> VersionPage:
        """One page of the versions ``query`` selects (filters, order, page size, cursor).

        Pass the page's ``next_cursor`` back in the same query for the next page.

        Raises:
            QueryError: a bad filter, order or cursor (its ``field`` names which).
            NotFoundError: ``query.model`` names no model.
        """
        return self.store.search_versions(query or VersionQuery())

    def delete(self, ref: str) -> ModelVersion:
        """Delete a version (refused while an alias points at it); ``gc`` frees its artifact."""
        version = self.get_version(ref)
        return self.store.delete_version(version.model, version.version)

    # --- aliases ---
    def set_alias(
        self, name: str, alias: str, version: int, *, moved_by: str | None = None
    ) -> AliasMove:
        """Point ``name@alias`` at version ``version`` (atomic, recorded in the history)."""
        return self.store.set_alias(name, alias, version, moved_by=moved_by or current_user())

    def remove_alias(self, name: str, alias: str, *, moved_by: str | None = None) -> AliasMove:
        """Remove an alias (recorded in the history)."""
        return self.store.remove_alias(name, alias, moved_by=moved_by or current_user())

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every move of an alias (or all of a model's aliases), oldest first."""
        return self.store.alias_history(name, alias)

    # --- runs ---
    def start_run(
        self,
        *,
        name: str = "",
        recipe: Mapping[str, Any] | None = None,
        data_fingerprint: str = "",
        code_version: str = "",
        params: Mapping[str, Any] | None = None,
    ) -> Run:
        """Record a run; pass it to ``register(..., run=run)`` for each package it makes."""
        if not code_version:
            from kiln.version import __version__

            code_version = f"kiln {__version__}"
        return self.store.create_run(
            name=name,
            recipe=recipe or {},
            data_fingerprint=data_fingerprint,
            code_version=code_version,
            params=params or {},
            created_by=current_user(),
        )

    def log_metrics(self, run: Run | str, metrics: Mapping[str, float], *, step: int) -> None:
        """Append metric points to a run's series."""
        self.store.log_metrics(run.id if isinstance(run, Run) else run, metrics, step=step)

    def finish_run(self, run: Run | str, *, status: str = "finished") -> Run:
        """Mark a run finished (or failed)."""
        return self.store.finish_run(run.id if isinstance(run, Run) else run, status=status)

    def get_run(self, run_id: str) -> Run:
        """A run with its metric series."""
        return self.store.get_run(run_id)

    # --- lineage ---
    def lineage(self, ref: str) -> Lineage:
        """The family of ``ref``: its root ancestor, that root's run, and all edges below it."""
        focus = self.get_version(ref)
        root = focus
        seen = {root.ref}
        while True:
            parents = [e.parent for e in self.store.parent_edges(root.model, root.version)]
            known = [p for p in parents if p and p not in seen]
            if not known:
                break
            root = self.get_version(known[0])
            seen.add(root.ref)
        edges: list[LineageEdge] = list(self.store.parent_edges(root.model, root.version))
        queue, visited = [root], {root.ref}
        while queue:
            node = queue.pop(0)
            for edge in self.store.child_edges(node.model, node.version):
                edges.append(edge)
                if edge.child not in visited:
                    visited.add(edge.child)
                    queue.append(self.get_version(edge.child))
        run = self.store.get_run(root.run_id) if root.run_id else None
        return Lineage(focus=focus.ref, root=root, run=run, edges=tuple(edges))

    # --- artifacts ---
    def gc(self, *, grace_s: float = DEFAULT_GC_GRACE_S, is_dry_run: bool = False) -> list[str]:
        """Remove stored artifacts no version uses; return their digests.

        Artifacts of registrations started less than ``grace_s`` ago are kept.
        """
        # List before asking which are live: an upload that starts after the listing is not
        # in it, and one that started before is live.
        stored = self.artifacts.list_digests()
        orphans = sorted(stored - self.store.live_digests(pending_max_age_s=grace_s))
        if not is_dry_run:
            for digest in orphans:
                self.artifacts.delete(digest)
        return orphans


def resolve_reference(ref: str | Path, *, registry: Registry | None = None) -> Path:
    """A package folder for ``ref``: a package path as given, or ``name@version``/``name@alias``.

    Raises:
        BadReferenceError: ``ref`` is neither an existing folder nor a model reference.
        NotFoundError: the model, version or alias does not exist.
    """
    path = Path(ref)
    if path.is_dir():
        return path
    text = str(ref)
    if not is_reference(text):
        raise BadReferenceError(
            f"{text!r} is neither a package folder nor a model reference "
            "(name@version such as sentiment@3, or name@alias such as sentiment@production)"
        )
    if registry is not None:
        return registry.resolve(text)
    with Registry() as opened:
        return opened.resolve(text)
