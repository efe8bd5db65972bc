"""Search, keyset pages and one-query resolution through the Python API, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from kiln.registry import Registry
from kiln.registry.errors import NotFoundError
from kiln.registry.search import MetricFilter, QueryError, VersionQuery
from kiln.registry.store import NewVersion

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def reg(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    opened = Registry(database_url, home=tmp_path / "home")
    yield opened
    opened.close()


def _new(model: str, i: int, **kwargs: Any) -> NewVersion:
    fields: dict[str, Any] = {"task": "text-classification", "format": "torch", **kwargs}
    return NewVersion(model=model, package_digest=f"{i:064x}", **fields)


def _refs(page: Any) -> list[str]:
    return [v.ref for v in page.versions]


def _all_pages(reg: Registry, query: VersionQuery) -> list[list[str]]:
    pages = []
    while True:
        page = reg.search(query)
        pages.append(_refs(page))
        if page.next_cursor is None:
            return pages
        query = dataclasses.replace(query, cursor=page.next_cursor)


def test_search_filters_each_field(reg: Registry) -> None:
    reg.store.create_versions([
        _new("a", 1, tags={"team": "nlp"}, metrics={"accuracy": 0.7}),
        _new("a", 2, tags={"team": "vision"}, metrics={"accuracy": 0.9}, format="onnx"),
        _new("b", 3, task="image-classification", metrics={"accuracy": 0.95, "note": "text"}),
    ])
    boundary = datetime.now(UTC)
    time.sleep(0.01)  # the next registration is strictly later than the boundary
    reg.store.create_versions([_new("a", 4, tags={"team": "nlp"}, metrics={"accuracy": 0.8})])
    reg.set_alias("a", "production", 2)

    def refs(**fields: Any) -> list[str]:
        return _refs(reg.search(VersionQuery(**fields)))

    assert refs() == ["a@1", "a@2", "b@1", "a@3"]
    assert refs(model="a") == ["a@1", "a@2", "a@3"]
    assert refs(tags={"team": "nlp"}) == ["a@1", "a@3"]
    assert refs(metrics=(MetricFilter.parse("accuracy>=0.8"),)) == ["a@2", "b@1", "a@3"]
    assert refs(metrics=(MetricFilter("accuracy", ">", 0.8), MetricFilter("accuracy", "<", 0.95))) == ["a@2"]
    assert refs(task="image-classification") == ["b@1"]
    assert refs(format="onnx") == ["a@2"]
    assert refs(created_after=boundary) == ["a@3"]
    assert refs(created_before=boundary) == ["a@1", "a@2", "b@1"]
    assert refs(alias="production") == ["a@2"]
    assert refs(alias="*", model="b") == []
    assert refs(tags={"team": "nlp"}, metrics=(MetricFilter.parse("accuracy<0.75"),)) == ["a@1"]


def test_search_orders_by_metric_and_pages_every_version_once(reg: Registry) -> None:
    # Ties on the metric: the keyset (value, id) still pages each version exactly once.
    reg.store.create_versions([_new("m", i, metrics={"f1": float(i % 4)}) for i in range(23)])
    query = VersionQuery(model="m", order_by="metric:f1", is_descending=True, limit=5)
    pages = _all_pages(reg, query)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    flat = [ref for page in pages for ref in page]
    assert sorted(flat) == sorted(f"m@{i}" for i in range(1, 24))
    f1 = [reg.get_version(ref).metrics["f1"] for ref in flat]
    assert f1 == sorted(f1, reverse=True)


@pytest.mark.parametrize("is_descending", [False, True])
def test_search_pages_by_version_in_both_directions(reg: Registry, is_descending: bool) -> None:
    reg.store.create_versions([_new("m", i) for i in range(12)])
    reg.store.create_versions([_new("other", 100)])
    pages = _all_pages(reg, VersionQuery(model="m", limit=5, is_descending=is_descending))
    expected = [f"m@{n}" for n in range(1, 13)]
    assert [ref for page in pages for ref in page] == (expected[::-1] if is_descending else expected)
    assert [len(p) for p in pages] == [5, 5, 2]


def test_search_page_after_a_new_registration_neither_repeats_nor_skips(reg: Registry) -> None:
    reg.store.create_versions([_new("m", i) for i in range(4)])
    first = reg.search(VersionQuery(model="m", limit=2))
    reg.store.create_versions([_new("m", 10)])
    rest = _all_pages(reg, VersionQuery(model="m", limit=2, cursor=first.next_cursor))
    assert _refs(first) + [r for page in rest for r in page] == [f"m@{n}" for n in range(1, 6)]


@pytest.mark.parametrize(
    ("fields", "field_name", "message"),
    [({"cursor": "not-a-cursor"}, "cursor", "not a cursor"),
     ({"limit": 0}, "limit", "between 1 and 1000, got 0"),
     ({"order_by": "size"}, "order_by", "'version' or 'metric:NAME'")],
)
def test_search_refuses_bad_fields_naming_them(
    reg: Registry, fields: dict[str, Any], field_name: str, message: str
) -> None:
    with pytest.raises(QueryError, match=message) as caught:
        reg.search(VersionQuery(**fields))
    assert caught.value.field == field_name


def test_search_refuses_a_cursor_of_another_query(reg: Registry) -> None:
    reg.store.create_versions([_new("m", i) for i in range(3)])
    cursor = reg.search(VersionQuery(model="m", limit=1)).next_cursor
    with pytest.raises(QueryError, match="cursor: belongs to another query"):
        reg.search(VersionQuery(model="m", limit=1, format="onnx", cursor=cursor))


def test_search_of_unknown_model_is_not_found(reg: Registry) -> None:
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        reg.search(VersionQuery(model="ghost"))


def _statements(reg: Registry) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []
    engine = reg.store._engine  # type: ignore[attr-defined]

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_c: Any, _cur: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    return seen


@pytest.mark.parametrize("ref", ["m@latest", "m@production"])
def test_resolution_is_one_query_that_never_scans_versions(
    reg: Registry, database_url: str, ref: str
) -> None:
    reg.store.create_versions([_new("m", i) for i in range(50)] + [_new("n", 99)])
    reg.set_alias("m", "production", 7)
    statements = _statements(reg)
    found = reg.get_version(ref)
    assert found.version == (50 if ref == "m@latest" else 7)
    assert found.aliases == (("production",) if ref == "m@production" else ())
    assert len(statements) == 1
    if database_url.startswith("sqlite"):
        # The plan reaches versions through an index, whatever the number of versions.
        statement, parameters = statements[0]
        with reg.store._engine.connect() as conn:  # type: ignore[attr-defined]
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = " | ".join(str(r[-1]) for r in rows)
        assert "SCAN versions" not in plan, plan


def test_latest_follows_deletion_and_reports_a_model_without_versions(reg: Registry) -> None:
    reg.store.create_versions([_new("m", 1), _new("m", 2)])
    reg.store.delete_version("m", 2)
    assert reg.get_version("m@latest").version == 1
    reg.store.delete_version("m", 1)
    with pytest.raises(NotFoundError, match="has no versions"):
        reg.get_version("m@latest")
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        reg.get_version("ghost@latest")


def test_updated_tags_and_metrics_are_searchable(reg: Registry) -> None:
    reg.store.create_versions([_new("m", 1, metrics={"accuracy": 0.5})])
    reg.store.update_version("m", 1, metrics={"accuracy": 0.9}, tags={"stage": "qa"})
    assert _refs(reg.search(VersionQuery(metrics=(MetricFilter.parse("accuracy>0.8"),)))) == ["m@1"]
    assert _refs(reg.search(VersionQuery(tags={"stage": "qa"}))) == ["m@1"]
    assert _refs(reg.search(VersionQuery(metrics=(MetricFilter.parse("accuracy<0.8"),)))) == []
