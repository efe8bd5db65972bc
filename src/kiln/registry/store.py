"""The registry store interface: what any backend must do, each public method one transaction.

``SqlStore`` (``sql_store.py``) is the one implementation, on SQLite and PostgreSQL. Methods
return frozen domain objects from ``domain.py`` and raise ``NotFoundError``/``ConflictError``
for user mistakes. Subclasses that miss a method cannot be instantiated (``abc`` enforces it).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.registry.domain import (
    AliasMove,
    ApiToken,
    LineageEdge,
    Model,
    ModelVersion,
    Resolution,
    Role,
    Run,
    User,
)
from kiln.registry.search import VersionPage, VersionQuery


@dataclass(frozen=True)
class NewVersion:
    """What a registration records about a package whose artifact is already stored."""

    model: str  # model name; created on first registration
    task: str  # task of the package
    package_digest: str  # hex sha256 (``package_digest``) of the package's manifest
    format: str = ""  # package format
    precision: str = ""  # package precision
    metrics: Mapping[str, Any] = field(default_factory=dict)  # metrics measured on it
    tags: Mapping[str, str] = field(default_factory=dict)  # free tags
    description: str = ""  # free text
    created_by: str = ""  # who registers it
    data_fingerprint: str = ""  # the package's data fingerprint
    run_id: str | None = None  # the run that produced it
    parents: Sequence[NewLineage] = ()  # where it came from


@dataclass(frozen=True)
class NewLineage:
    """One parent of a new version: a registered version, or only a hint when unknown here."""

    parent_model: str | None  # parent's model name, None if the parent is not registered
    parent_version: int | None  # parent's version number, None if not registered
    parent_hint: str  # the raw parent value from the manifest (digest, reference or path)
    transformation: str  # e.g. "train", "distill", "quantize-int8"
    settings: Mapping[str, Any] = field(default_factory=dict)  # its settings


class RegistryStore(abc.ABC):
    """Metadata of models, versions, aliases, lineage, runs, users and tokens."""

    # --- models and versions ---
    @abc.abstractmethod
    def create_version(self, new: NewVersion, *, upload_id: int | None = None) -> ModelVersion:
        """Allocate the model's next version number and record the version (and lineage).

        ``upload_id`` (from ``begin_upload``) is closed in the same transaction.
        """

    @abc.abstractmethod
    def create_versions(self, news: Sequence[NewVersion]) -> list[ModelVersion]:
        """``create_version`` for each of ``news``, in order, all in one transaction."""

    @abc.abstractmethod
    def get_model(self, name: str) -> Model:
        """The model called ``name``."""

    @abc.abstractmethod
    def list_models(self) -> list[Model]:
        """Every model, by name."""

    @abc.abstractmethod
    def list_versions(self, model: str) -> list[ModelVersion]:
        """Every version of ``model``, oldest first."""

    @abc.abstractmethod
    def get_version(self, model: str, version: int) -> ModelVersion:
        """One version of ``model``."""

    @abc.abstractmethod
    def search_versions(self, query: VersionQuery) -> VersionPage:
        """One page of the versions ``query`` selects, in its order."""

    @abc.abstractmethod
    def find_versions(self, package_digest: str) -> list[ModelVersion]:
        """Versions whose package has this digest, oldest first."""

    @abc.abstractmethod
    def update_version(
        self,
        model: str,
        version: int,
        *,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        """Merge ``metrics`` and ``tags`` into a version's."""

    @abc.abstractmethod
    def delete_version(self, model: str, version: int) -> ModelVersion:
        """Delete a version no alias points to; its number is never reused."""

    # --- aliases ---
    @abc.abstractmethod
    def set_alias(self, model: str, alias: str, version: int, *, moved_by: str) -> AliasMove:
        """Point ``alias`` at ``version`` and record the move, atomically."""

    @abc.abstractmethod
    def remove_alias(self, model: str, alias: str, *, moved_by: str) -> AliasMove:
        """Remove ``alias`` and record the move."""

    @abc.abstractmethod
    def get_alias(self, model: str, alias: str) -> ModelVersion:
        """The version ``alias`` (``latest``: the highest number) points at, in one query."""

    @abc.abstractmethod
    def resolve_alias(self, model: str, alias: str) -> Resolution:
        """The version ``alias`` (or ``latest``) points at, with the model's stamp, in one query."""

    @abc.abstractmethod
    def model_stamps(self, models: Iterable[str]) -> dict[str, int]:
        """The change stamp of each named model that exists, in one query.

        A model's stamp grows with every change to its versions or aliases.
        """

    @abc.abstractmethod
    def alias_history(self, model: str, alias: str | None = None) -> list[AliasMove]:
        """Every move of ``alias`` (or of all the model's aliases), oldest first."""

    # --- lineage ---
    @abc.abstractmethod
    def parent_edges(self, model: str, version: int) -> list[LineageEdge]:
        """Edges into a version (where it came from)."""

    @abc.abstractmethod
    def child_edges(self, model: str, version: int) -> list[LineageEdge]:
        """Edges out of a version (what was made from it)."""

    # --- runs ---
    @abc.abstractmethod
    def create_run(
        self,
        *,
        name: str,
        recipe: Mapping[str, Any],
        data_fingerprint: str,
        code_version: str,
        params: Mapping[str, Any],
        created_by: str,
    ) -> Run:
        """Record a new run in status ``running``."""

    @abc.abstractmethod
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int) -> None:
        """Append one point per metric to a run's series."""

    @abc.abstractmethod
    def finish_run(self, run_id: str, *, status: str = "finished") -> Run:
        """Mark a run ``finished`` or ``failed``."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> Run:
        """A run with its metric series."""

    # --- artifact bookkeeping ---
    @abc.abstractmethod
    def begin_upload(self, package_digest: str) -> int:
        """Record that an artifact upload started, so ``gc`` leaves it alone; return its id."""

    @abc.abstractmethod
    def end_upload(self, upload_id: int) -> None:
        """Forget an upload record (after a failed registration)."""

    @abc.abstractmethod
    def live_digests(self, *, pending_max_age_s: float) -> set[str]:
        """Digests in use: by a version, or by an upload younger than ``pending_max_age_s``.

        Older upload records belong to dead registrations and are deleted.
        """

    # --- users and tokens ---
    @abc.abstractmethod
    def create_user(self, name: str, role: Role) -> User:
        """Add a user."""

    @abc.abstractmethod
    def list_users(self) -> list[User]:
        """Every user, by name."""

    @abc.abstractmethod
    def create_token(self, user: str, *, name: str = "") -> tuple[ApiToken, str]:
        """Issue a token; return its record and the secret (shown once, stored hashed)."""

    @abc.abstractmethod
    def revoke_token(self, token_id: str) -> ApiToken:
        """Revoke a token."""

    @abc.abstractmethod
    def has_tokens(self) -> bool:
        """Whether any token that is not revoked exists."""

    @abc.abstractmethod
    def authenticate(self, secret: str) -> User:
        """The user a valid token belongs to; ``AuthError`` otherwise."""
