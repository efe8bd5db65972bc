"""The alias cache's staleness bound, with an injected clock, on SQLite and PostgreSQL.

The follower (a replica) and the writer have their own connections, as two processes would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from kiln.registry import Registry
from kiln.registry.cache import AliasCache
from kiln.registry.errors import NotFoundError
from kiln.registry.sql_store import SqlStore
from kiln.registry.store import NewVersion

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
MAX_AGE_S = 5.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def writer(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(database_url, home=tmp_path / "home")
    reg.store.create_versions([
        NewVersion(model=m, task="text-classification", package_digest=f"{i:064x}")
        for i, m in enumerate(["a", "a", "a", "b"])
    ])
    reg.set_alias("a", "production", 1)
    reg.set_alias("b", "production", 1)
    yield reg
    reg.close()


@pytest.fixture
def follower(writer: Registry, database_url: str) -> Iterator[SqlStore]:
    store = SqlStore.from_url(database_url)
    yield store
    store.close()


def _count_queries(store: SqlStore) -> list[str]:
    seen: list[str] = []

    @event.listens_for(store._engine, "before_cursor_execute")
    def _record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    return seen


def test_cache_sees_an_alias_move_exactly_at_its_bound(writer: Registry, follower: SqlStore) -> None:
    clock = FakeClock()
    cache = AliasCache(follower, max_age_s=MAX_AGE_S, clock=clock)
    assert cache.get("a@production").version == 1
    moved_at = clock.now
    writer.set_alias("a", "production", 2)
    clock.now = moved_at + MAX_AGE_S - 0.001
    assert cache.get("a@production").version == 1  # within the bound: may still be stale
    clock.now = moved_at + MAX_AGE_S
    assert cache.get("a@production").version == 2  # at the bound: never stale


def test_cache_answers_from_memory_within_the_bound_and_revalidates_in_one_query(
    writer: Registry, follower: SqlStore
) -> None:
    clock = FakeClock()
    cache = AliasCache(follower, max_age_s=MAX_AGE_S, clock=clock)
    refs = ["a@production", "a@latest", "b@production"]
    for ref in refs:
        cache.get(ref)
    queries = _count_queries(follower)
    for _ in range(10):
        for ref in refs:
            cache.get(ref)
    assert queries == []
    clock.now += MAX_AGE_S
    assert [cache.get(ref).version for ref in refs] == [1, 3, 1]
    assert len(queries) == 1 and "stamp" in queries[0]  # one stamp read covers both models
    assert cache.stats().hits == 33


def test_cache_sees_a_new_latest_and_changed_metrics(writer: Registry, follower: SqlStore) -> None:
    clock = FakeClock()
    cache = AliasCache(follower, max_age_s=MAX_AGE_S, clock=clock)
    assert cache.get("a@latest").version == 3
    assert cache.get("b@production").metrics == {}
    writer.store.create_versions([NewVersion(model="a", task="text-classification", package_digest="e" * 64)])
    writer.store.update_version("b", 1, metrics={"accuracy": 0.9})
    clock.now += MAX_AGE_S
    assert cache.get("a@latest").version == 4
    assert cache.get("b@production").metrics == {"accuracy": 0.9}


def test_cache_with_zero_max_age_is_never_stale_and_does_not_cache_errors(
    writer: Registry, follower: SqlStore
) -> None:
    cache = AliasCache(follower, max_age_s=0.0, clock=FakeClock())
    assert cache.get("a@production").version == 1
    writer.set_alias("a", "production", 3)
    assert cache.get("a@production").version == 3
    with pytest.raises(NotFoundError, match="no alias 'staging'"):
        cache.get("a@staging")
    writer.set_alias("a", "staging", 2)
    assert cache.get("a@staging").version == 2
