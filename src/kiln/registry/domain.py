"""Frozen domain objects the registry returns; never database rows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Role(enum.StrEnum):
    """What an API token may do, weakest first; each role may do what the roles before it may.

    reader: inference and reads. feedback: also send true labels, which drive retraining.
    writer: also register, move aliases, manage served models. admin: also users and tokens.
    """

    READER = "reader"
    FEEDBACK = "feedback"
    WRITER = "writer"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether this role is at least as strong as ``needed``."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class Model:
    """A named model: the home of its numbered versions and aliases."""

    name: str  # unique model name, e.g. "sentiment"
    task: str  # task of its packages, e.g. "text-classification"
    description: str  # free text
    created_at: datetime  # when the first version was registered (UTC)
    latest_version: int  # highest version number ever allocated (0 before the first)


@dataclass(frozen=True)
class ModelVersion:
    """One registered model package under a model name."""

    model: str  # model name
    version: int  # number, unique per model, allocated 1, 2, 3, ... without gaps
    package_digest: str  # ``kiln.runtime.package.package_digest`` of the package (hex sha256)
    format: str  # package format, e.g. "torch" or "onnx"
    precision: str  # e.g. "fp32", "int8"
    metrics: dict[str, Any]  # metrics measured on this package
    tags: dict[str, str]  # free key/value tags
    description: str  # free text
    created_at: datetime  # registration time (UTC)
    created_by: str  # user or process that registered it
    data_fingerprint: str  # fingerprint of the data the package was made from ("" if unknown)
    run_id: str | None  # the run that produced it, if recorded
    aliases: tuple[str, ...] = ()  # aliases pointing at this version

    @property
    def ref(self) -> str:
        """The reference ``name@version``."""
        return f"{self.model}@{self.version}"


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias; ``from_version`` is None when it was created."""

    model: str  # model name
    alias: str  # alias name, e.g. "production"
    from_version: int | None  # version it pointed at before, None if new
    to_version: int | None  # version it points at after, None if removed
    moved_at: datetime  # when (UTC)
    moved_by: str  # who


@dataclass(frozen=True)
class LineageEdge:
    """Parent -> child: ``child`` was made from ``parent`` by ``transformation``."""

    child: str  # child reference ``name@version``
    parent: str | None  # parent reference ``name@version``, None if not in this registry
    parent_hint: str  # the manifest's raw parent value (digest, reference or path), may be ""
    transformation: str  # e.g. "train", "distill", "quantize-int8"
    settings: dict[str, Any]  # settings of that transformation


@dataclass(frozen=True)
class MetricPoint:
    """One value of a run's metric series."""

    key: str  # metric name, e.g. "train/loss"
    step: int  # step (epoch, batch...) it was measured at
    value: float  # the value
    timestamp: datetime  # when it was logged (UTC)


@dataclass(frozen=True)
class Run:
    """One execution of a recipe (or of a stage) that produced packages."""

    id: str  # opaque unique id
    name: str  # human label, e.g. the recipe name
    recipe: dict[str, Any]  # the resolved recipe, every default filled in
    data_fingerprint: str  # fingerprint of the data it used, e.g. "sha256:..."
    code_version: str  # Kiln version and/or git commit
    params: dict[str, Any]  # parameters worth searching on
    status: str  # "running", "finished" or "failed"
    started_at: datetime  # (UTC)
    ended_at: datetime | None  # (UTC), None while running
    created_by: str  # who started it
    metrics: tuple[MetricPoint, ...] = field(default=())  # every logged metric point


@dataclass(frozen=True)
class User:
    """A registry user; the role applies to all of the user's tokens."""

    name: str  # unique user name
    role: Role  # reader, feedback, writer or admin
    created_at: datetime  # (UTC)


@dataclass(frozen=True)
class ApiToken:
    """A token's public record; the secret itself is shown once at creation and stored hashed."""

    id: str  # public token id (the part before the secret)
    user: str  # owner's user name
    name: str  # label, e.g. "ci"
    created_at: datetime  # (UTC)
    revoked_at: datetime | None  # (UTC) None while valid


@dataclass(frozen=True)
class Resolution:
    """What a reference ``name@alias`` (or ``name@latest``) resolved to, and when."""

    version: ModelVersion  # the version it points at
    stamp: int  # the model's change stamp read with it; any later change to the model bumps it
