"""Database tables of the registry (SQLAlchemy 2 declarative); changed only through migrations.

Version numbers come from ``models.last_version``: a registration increments it and inserts the
version row in one transaction, under the model row's lock, so numbers are unique (also enforced
by ``uq_versions_model_number``) and gap-free (a failed insert rolls the counter back).

``models.stamp`` grows with every change to a model's versions or aliases (same transaction, same
lock), so a cache of alias resolutions revalidates with one indexed read of the stamps.
``version_tags`` and ``version_metrics`` copy each version's tags and numeric metrics into rows
that the search filters and orders with an index; the JSON columns stay what reads return.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every registry table."""


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_task", "task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    task: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Bumped by every write to the model's versions or aliases (cache revalidation).
    stamp: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    data_fingerprint: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    code_version: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False, default="")


class RunMetricRow(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (Index("ix_run_metrics_run_key_step", "run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(String(200), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="uq_versions_model_number"),
        Index("ix_versions_package_digest", "package_digest"),
        Index("ix_versions_created_at", "created_at"),
        Index("ix_versions_format", "format"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    package_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    format: Mapped[str] = mapped_column(String(50), nullable=False, default="")
    precision: Mapped[str] = mapped_column(String(50), nullable=False, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    tags: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_by: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    data_fingerprint: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), nullable=True)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),
        Index("ix_aliases_version_id", "version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class VersionTagRow(Base):
    """One tag of a version, for indexed search (``versions.tags`` holds the same)."""

    __tablename__ = "version_tags"
    __table_args__ = (Index("ix_version_tags_key_value", "key", "value", "version_id"),)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class VersionMetricRow(Base):
    """One numeric metric of a version, for indexed thresholds and ordering."""

    __tablename__ = "version_metrics"
    __table_args__ = (Index("ix_version_metrics_key_value", "key", "value", "version_id"),)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[float] = mapped_column(Float, nullable=False)


class AliasMoveRow(Base):
    __tablename__ = "alias_moves"
    __table_args__ = (Index("ix_alias_moves_model_alias", "model_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), nullable=False)
    alias: Mapped[str] = mapped_column(String(100), nullable=False)
    # Version *numbers*, not ids: history outlives deleted versions.
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    moved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    moved_by: Mapped[str] = mapped_column(String(200), nullable=False, default="")


class LineageRow(Base):
    __tablename__ = "lineage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    child_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True
    )
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", ondelete="SET NULL"), nullable=True, index=True
    )
    parent_hint: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    transformation: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


class UploadRow(Base):
    """An artifact upload in progress: protects it from ``gc`` until its version commits."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    package_digest: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
