"""The SQL behind alias resolution and version search; runs inside ``SqlStore``'s transactions.

Every query here is served by an index (migration 0002): ``models.name`` then
``aliases (model_id, name)`` or ``versions (model_id, number)`` for a resolution; for a search,
``version_tags``/``version_metrics (key, value, version_id)``, ``versions.created_at``,
``versions.format``, ``models.task`` and ``aliases.version_id``, and a keyset range on the sort
key instead of an ``OFFSET`` so that page N costs what page 1 costs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from kiln.registry.references import LATEST
from kiln.registry.schema import AliasRow, ModelRow, VersionMetricRow, VersionRow, VersionTagRow
from kiln.registry.search import ANY_ALIAS, CursorKey, MetricFilter, VersionQuery, decode_cursor, metric_values


def _alias_list() -> Any:
    # The version's aliases in the same query, as one "a,b" string (alias names hold no comma).
    pointing = aliased(AliasRow)
    return (
        select(func.aggregate_strings(pointing.name, ","))
        .where(pointing.version_id == VersionRow.id)
        .correlate(VersionRow)
        .scalar_subquery()
    )


@functools.cache
def _resolve_statement(is_latest: bool) -> Select[Any]:
    # Built once: making the statement costs more Python time than the database takes to run it.
    query = select(VersionRow, ModelRow.name, ModelRow.stamp, _alias_list()).join(
        ModelRow, ModelRow.id == VersionRow.model_id
    )
    if is_latest:
        return query.where(ModelRow.name == bindparam("model")).order_by(VersionRow.number.desc()).limit(1)
    return query.join(AliasRow, AliasRow.version_id == VersionRow.id).where(
        ModelRow.name == bindparam("model"), AliasRow.model_id == ModelRow.id,
        AliasRow.name == bindparam("alias"),
    )


def resolve(s: Session, model: str, alias: str) -> tuple[VersionRow, str, int, tuple[str, ...]] | None:
    """One query: the version ``model@alias`` (``latest``: the highest number) points at.

    Returns the row, the model name, the model's stamp and the version's aliases, or None.
    """
    is_latest = alias == LATEST
    params = {"model": model} if is_latest else {"model": model, "alias": alias}
    found = s.execute(_resolve_statement(is_latest), params).one_or_none()
    if found is None:
        return None
    row, name, stamp, names = found
    return row, name, stamp, tuple(sorted(names.split(","))) if names else ()


def stamps(s: Session, models: Iterable[str]) -> dict[str, int]:
    """One query: the change stamp of each named model that exists."""
    names = sorted(set(models))
    if not names:
        return {}
    rows = s.execute(select(ModelRow.name, ModelRow.stamp).where(ModelRow.name.in_(names)))
    return {name: stamp for name, stamp in rows}


def search(
    s: Session, query: VersionQuery, model_id: int | None
) -> tuple[list[tuple[VersionRow, str]], CursorKey | None]:
    """One page of versions matching ``query`` and the key of its last row if more follow."""
    metric = query.order_metric
    sort_value = None
    if metric is None:
        # In one model version numbers order the rows; across models registration order (ids).
        key_column: Any = VersionRow.number if model_id is not None else VersionRow.id
        statement: Select[Any] = select(VersionRow, ModelRow.name, key_column)
    else:
        ordered = aliased(VersionMetricRow)
        sort_value = ordered.value
        # (value, version_id) is the tail of the (key, value, version_id) index: no sort step.
        key_column = ordered.version_id
        statement = select(VersionRow, ModelRow.name, key_column, sort_value).join(
            ordered, and_(ordered.version_id == VersionRow.id, ordered.key == metric)
        )
    statement = statement.join(ModelRow, ModelRow.id == VersionRow.model_id)
    statement = statement.where(*_filters(query, model_id))
    after = decode_cursor(query)
    if after is not None:
        statement = statement.where(_after(after, key_column, sort_value, query.is_descending))
    order = [sort_value, key_column] if sort_value is not None else [key_column]
    statement = statement.order_by(*[c.desc() if query.is_descending else c.asc() for c in order])
    rows = s.execute(statement.limit(query.limit + 1)).all()
    page = [(r[0], r[1]) for r in rows[: query.limit]]
    if len(rows) <= query.limit:
        return page, None
    last = rows[query.limit - 1]
    return page, CursorKey(float(last[3]) if sort_value is not None else None, int(last[2]))


def _filters(query: VersionQuery, model_id: int | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if model_id is not None:
        where.append(VersionRow.model_id == model_id)
    if query.task is not None:
        where.append(ModelRow.task == query.task)
    if query.format is not None:
        where.append(VersionRow.format == query.format)
    if query.created_after is not None:
        where.append(VersionRow.created_at >= query.created_after)
    if query.created_before is not None:
        where.append(VersionRow.created_at < query.created_before)
    for key, value in query.tags.items():
        where.append(
            exists().where(
                VersionTagRow.version_id == VersionRow.id,
                VersionTagRow.key == key,
                VersionTagRow.value == value,
            )
        )
    where += [_metric_holds(m) for m in query.metrics]
    if query.alias is not None:
        has_alias = exists().where(AliasRow.version_id == VersionRow.id)
        if query.alias != ANY_ALIAS:
            has_alias = has_alias.where(AliasRow.name == query.alias)
        where.append(has_alias)
    return where


def _metric_holds(m: MetricFilter) -> ColumnElement[bool]:
    value = VersionMetricRow.value
    compare = {">=": value >= m.value, "<=": value <= m.value, ">": value > m.value,
               "<": value < m.value, "=": value == m.value}[m.op]
    return exists().where(
        VersionMetricRow.version_id == VersionRow.id, VersionMetricRow.key == m.name, compare
    )


def _after(
    key: CursorKey, key_column: Any, sort_value: Any, is_descending: bool
) -> ColumnElement[bool]:
    if sort_value is None:
        return key_column < key.row_id if is_descending else key_column > key.row_id
    value = key.value
    if is_descending:
        # The redundant bound on the value alone lets the (key, value) index range-scan.
        return and_(sort_value <= value, or_(sort_value < value, key_column < key.row_id))
    return and_(sort_value >= value, or_(sort_value > value, key_column > key.row_id))


def aliases_of(s: Session, version_ids: list[int]) -> dict[int, tuple[str, ...]]:
    """One query: the aliases pointing at each of ``version_ids``."""
    found: dict[int, list[str]] = {}
    if version_ids:
        rows = s.execute(
            select(AliasRow.version_id, AliasRow.name).where(AliasRow.version_id.in_(version_ids))
        )
        for version_id, name in rows:
            found.setdefault(version_id, []).append(name)
    return {k: tuple(sorted(v)) for k, v in found.items()}


def write_search_rows(
    s: Session, version_id: int, *, tags: Mapping[str, Any], metrics: Mapping[str, Any]
) -> None:
    """Replace a version's ``version_tags``/``version_metrics`` rows with its new tags and metrics."""
    s.execute(delete(VersionTagRow).where(VersionTagRow.version_id == version_id))
    s.execute(delete(VersionMetricRow).where(VersionMetricRow.version_id == version_id))
    write_search_rows_of(s, [(version_id, tags, metrics)])


def write_search_rows_of(
    s: Session, versions: Iterable[tuple[int, Mapping[str, Any], Mapping[str, Any]]]
) -> None:
    """Insert the tag and metric rows of new versions, given as (id, tags, metrics), in two batches."""
    tag_rows, metric_rows = [], []
    for version_id, tags, metrics in versions:
        tag_rows += [{"version_id": version_id, "key": str(k), "value": str(v)} for k, v in tags.items()]
        metric_rows += [
            {"version_id": version_id, "key": k, "value": v} for k, v in metric_values(metrics).items()
        ]
    if tag_rows:
        s.execute(insert(VersionTagRow), tag_rows)
    if metric_rows:
        s.execute(insert(VersionMetricRow), metric_rows)
