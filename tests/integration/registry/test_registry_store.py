"""The SQL store on real SQLite and real PostgreSQL: every test runs on both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy.orm import Session

from kiln.registry.domain import Role
from kiln.registry.errors import AuthError, ConflictError, NotFoundError, RegistryError
from kiln.registry.schema import TokenRow, VersionRow
from kiln.registry.sql_store import SqlStore
from kiln.registry.store import NewLineage, NewVersion

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    opened = SqlStore.from_url(database_url)
    yield opened
    opened.close()


def _new(model: str = "m", digest: str = "a" * 64, **kwargs: object) -> NewVersion:
    return NewVersion(model=model, task="text-classification", package_digest=digest, **kwargs)


def test_store_numbers_versions_from_one_per_model(store: SqlStore) -> None:
    numbers = [store.create_version(_new("a")).version for _ in range(3)]
    other = store.create_version(_new("b")).version
    assert numbers == [1, 2, 3]
    assert other == 1
    assert store.get_model("a").latest_version == 3


def test_store_database_enforces_unique_model_version(store: SqlStore) -> None:
    first = store.create_version(_new())
    with Session(store._engine) as s, pytest.raises(sqlalchemy.exc.IntegrityError):
        model_id = s.scalars(sqlalchemy.select(VersionRow.model_id)).one()
        s.add(VersionRow(model_id=model_id, number=first.version, package_digest="b" * 64,
                         metrics={}, tags={}, created_at=first.created_at))
        s.commit()


def test_store_returns_frozen_domain_objects(store: SqlStore) -> None:
    version = store.create_version(_new(metrics={"accuracy": 0.9}, tags={"k": "v"}))
    with pytest.raises(AttributeError):
        version.version = 7  # type: ignore[misc]
    again = store.get_version("m", 1)
    assert (again.metrics, again.tags, again.created_at.tzinfo is not None) == (
        {"accuracy": 0.9}, {"k": "v"}, True)


def test_store_never_reuses_a_deleted_number(store: SqlStore) -> None:
    store.create_version(_new())
    store.create_version(_new())
    store.delete_version("m", 2)
    assert store.create_version(_new()).version == 3
    with pytest.raises(NotFoundError, match="no version 2"):
        store.get_version("m", 2)


def test_store_alias_moves_atomically_with_history(store: SqlStore) -> None:
    for _ in range(2):
        store.create_version(_new())
    store.set_alias("m", "production", 1, moved_by="ana")
    store.set_alias("m", "production", 2, moved_by="bo")
    assert store.get_alias("m", "production").version == 2
    assert store.get_version("m", 2).aliases == ("production",)
    history = [(h.from_version, h.to_version, h.moved_by) for h in store.alias_history("m")]
    assert history == [(None, 1, "ana"), (1, 2, "bo")]


def test_store_refuses_deleting_an_aliased_version(store: SqlStore) -> None:
    store.create_version(_new())
    store.set_alias("m", "staging", 1, moved_by="ana")
    with pytest.raises(ConflictError, match="staging"):
        store.delete_version("m", 1)
    store.remove_alias("m", "staging", moved_by="ana")
    assert store.delete_version("m", 1).version == 1
    assert store.alias_history("m", "staging")[-1].to_version is None


def test_store_refuses_alias_named_like_a_version(store: SqlStore) -> None:
    store.create_version(_new())
    with pytest.raises(RegistryError, match="plain number"):
        store.set_alias("m", "3", 1, moved_by="ana")


def test_store_records_lineage_both_ways(store: SqlStore) -> None:
    store.create_version(_new("teacher"))
    parent = NewLineage("teacher", 1, "sha256:" + "a" * 64, "distill", {"temperature": 2.0})
    store.create_version(_new("student", "b" * 64, parents=[parent]))
    up = store.parent_edges("student", 1)
    down = store.child_edges("teacher", 1)
    assert up == down
    assert (up[0].parent, up[0].child, up[0].transformation, up[0].settings) == (
        "teacher@1", "student@1", "distill", {"temperature": 2.0})


def test_store_keeps_child_lineage_hint_when_parent_deleted(store: SqlStore) -> None:
    store.create_version(_new())
    store.create_version(_new(parents=[NewLineage("m", 1, "", "prune")]))
    store.delete_version("m", 1)
    edge = store.parent_edges("m", 2)[0]
    assert (edge.parent, edge.parent_hint) == (None, "m@1 (deleted)")


def test_store_records_run_with_metric_series(store: SqlStore) -> None:
    run = store.create_run(name="r", recipe={"train": {"epochs": 2}}, data_fingerprint="sha256:x",
                           code_version="kiln 0.1.0", params={"lr": 0.1}, created_by="ana")
    store.log_metrics(run.id, {"loss": 1.0}, step=0)
    store.log_metrics(run.id, {"loss": 0.5}, step=1)
    finished = store.finish_run(run.id)
    version = store.create_version(_new(run_id=run.id))
    assert [p.value for p in finished.metrics] == [1.0, 0.5]
    assert (finished.status, finished.recipe, version.run_id) == (
        "finished", {"train": {"epochs": 2}}, run.id)


def test_store_refuses_unknown_run(store: SqlStore) -> None:
    with pytest.raises(NotFoundError, match="no run"):
        store.create_version(_new(run_id="nope"))
    assert store.list_models() == []  # the whole registration rolled back


def test_store_stores_only_token_hashes(store: SqlStore) -> None:
    store.create_user("ci", Role.WRITER)
    token, secret = store.create_token("ci", name="pipeline")
    with Session(store._engine) as s:
        stored = s.get_one(TokenRow, token.id)
    assert secret not in stored.secret_sha256
    assert store.authenticate(secret).role is Role.WRITER
    store.revoke_token(token.id)
    with pytest.raises(AuthError, match="revoked"):
        store.authenticate(secret)
    with pytest.raises(AuthError):
        store.authenticate(secret[:-2] + "xx")


def test_store_has_tokens_only_while_one_is_not_revoked(store: SqlStore) -> None:
    assert not store.has_tokens()
    store.create_user("labeller", Role.FEEDBACK)
    token, secret = store.create_token("labeller")
    assert store.has_tokens() and store.authenticate(secret).role is Role.FEEDBACK
    store.revoke_token(token.id)
    assert not store.has_tokens()


def test_store_upload_records_protect_digests_until_stale(store: SqlStore) -> None:
    upload = store.begin_upload("c" * 64)
    store.create_version(_new(digest="d" * 64))
    assert store.live_digests(pending_max_age_s=3600) == {"c" * 64, "d" * 64}
    assert store.live_digests(pending_max_age_s=0) == {"d" * 64}
    store.end_upload(upload)
