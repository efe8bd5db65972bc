"""Search and scale: tag and metric rows, indexes for every search filter, model stamps.

Existing versions get their tags and numeric metrics copied into ``version_tags`` and
``version_metrics`` so that search finds them as it finds new ones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 18:00:00.000000
"""

import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stamp", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_models_task", ["task"], unique=False)
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.create_index("ix_versions_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_versions_format", ["format"], unique=False)
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.create_index("ix_aliases_version_id", ["version_id"], unique=False)
    tags = op.create_table(
        "version_tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "key"),
    )
    op.create_index("ix_version_tags_key_value", "version_tags", ["key", "value", "version_id"])
    metrics = op.create_table(
        "version_metrics",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id", "key"),
    )
    op.create_index(
        "ix_version_metrics_key_value", "version_metrics", ["key", "value", "version_id"]
    )
    _backfill(tags, metrics)


def _backfill(tags: sa.Table, metrics: sa.Table) -> None:
    versions = sa.table(
        "versions", sa.column("id", sa.Integer()), sa.column("tags", sa.JSON()),
        sa.column("metrics", sa.JSON()),
    )
    bind = op.get_bind()
    last_id = 0
    while True:
        rows = bind.execute(
            sa.select(versions.c.id, versions.c.tags, versions.c.metrics)
            .where(versions.c.id > last_id)
            .order_by(versions.c.id)
            .limit(_BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        tag_rows = [
            {"version_id": vid, "key": str(k), "value": str(v)}
            for vid, version_tags, _ in rows for k, v in (version_tags or {}).items()
        ]
        metric_rows = [
            {"version_id": vid, "key": str(k), "value": float(v)}
            for vid, _, version_metrics in rows for k, v in (version_metrics or {}).items()
            if _is_number(v)
        ]
        if tag_rows:
            bind.execute(tags.insert(), tag_rows)
        if metric_rows:
            bind.execute(metrics.insert(), metric_rows)
        last_id = rows[-1][0]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def downgrade() -> None:
    op.drop_index("ix_version_metrics_key_value", table_name="version_metrics")
    op.drop_table("version_metrics")
    op.drop_index("ix_version_tags_key_value", table_name="version_tags")
    op.drop_table("version_tags")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_index("ix_aliases_version_id")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_index("ix_versions_format")
        batch_op.drop_index("ix_versions_created_at")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_task")
        batch_op.drop_column("stamp")
