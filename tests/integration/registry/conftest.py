"""Real databases for the registry tests: SQLite files and a throw-away PostgreSQL cluster.

The PostgreSQL cluster is started once per session with ``initdb``/``pg_ctl`` on a free port
on 127.0.0.1 and removed at the end. ``KILN_TEST_DATABASE_URL`` (a server URL whose user may
create databases) replaces it. Each test gets its own fresh database either way.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.postgres import PostgresCluster, PostgresError, create_database, drop_database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL (without database) of a PostgreSQL server for this session."""
    external = os.environ.get("KILN_TEST_DATABASE_URL")
    if external:
        yield external.rsplit("/", 1)[0] if external.count("/") > 2 else external
        return
    try:
        cluster = PostgresCluster.start()
    except PostgresError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry database on the backend the test is parametrized with."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"kiln_test_{uuid.uuid4().hex[:12]}"
    url = create_database(server, name)
    try:
        yield url
    finally:
        drop_database(server, name)


@pytest.fixture
def kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("KILN_HOME", str(home))
    monkeypatch.delenv("KILN_DATABASE_URL", raising=False)
    monkeypatch.delenv("KILN_ARTIFACTS_URL", raising=False)
    monkeypatch.setenv("KILN_USER", "tester")
    return home


def write_package(
    dest: Path,
    payload: bytes,
    *,
    parent: Any = None,
    transformation: str = "train",
    metrics: dict[str, float] | None = None,
    task: str = "text-classification",
) -> Path:
    """A small package with one data file, written through Kiln's package writer (no torch)."""
    from kiln.runtime.package import finalize_package, staged_package

    with staged_package(dest) as staging:
        (staging / "weights.bin").write_bytes(payload)
        (staging / "config.json").write_text(json.dumps({"size": len(payload)}))
        finalize_package(
            staging,
            {
                "task": task,
                "format": "torch",
                "precision": "fp32",
                "labels": ["neg", "pos"],
                "metrics": metrics or {},
                "lineage": {"parent": parent, "transformation": transformation,
                            "settings": {"note": transformation}},
                "data_fingerprint": "sha256:" + "d" * 64,
                "recipe": {},
            },
        )
    return dest


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    """``make_package(payload, **manifest_fields) -> path``: a fresh small package."""
    counter = iter(range(10**6))

    def make(payload: bytes | None = None, **kwargs: Any) -> Path:
        index = next(counter)
        body = payload if payload is not None else f"weights-{index}".encode() * 100
        return write_package(tmp_path / "packages" / f"pkg-{index}", body, **kwargs)

    return make
