"""Real databases for the registry tests: SQLite files and a throw-away PostgreSQL cluster.

The PostgreSQL cluster is started once per session with ``initdb``/``pg_ctl`` on a free port
on 127.0.0.1 and removed at the end. ``KILN_TEST_DATABASE_URL`` (a server URL whose user may
create databases) replaces it. Each test gets its own fresh database either way.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_SEARCH_DIRS = ["/usr/local/bin", *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")))]
PG_INSTALL_HELP = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in {dirs} or on PATH. "
    "Install them (Debian/Ubuntu: `apt-get install -y postgresql-15` or `postgresql`, which puts "
    "them in /usr/lib/postgresql/<version>/bin), or set KILN_TEST_DATABASE_URL to a PostgreSQL "
    "server URL whose user may create databases."
)
BACKENDS = ["sqlite", "postgresql"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin_dir() -> Path:
    for folder in PG_SEARCH_DIRS:
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    pytest.fail(PG_INSTALL_HELP.format(dirs=PG_SEARCH_DIRS), pytrace=False)


def _as_user() -> tuple[list[str], str | None]:
    """initdb refuses to run as root: run the server as an unprivileged user then."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], name
    pytest.fail("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL (without database) of a PostgreSQL server for this session."""
    external = os.environ.get("KILN_TEST_DATABASE_URL")
    if external:
        yield external.rsplit("/", 1)[0] if external.count("/") > 2 else external
        return
    bin_dir = _pg_bin_dir()
    prefix, user = _as_user()
    base = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    if user:
        shutil.chown(base, user=user)
    data, port = base / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.fail(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "kiln", "--auth=trust", "-E", "UTF8",
        "--no-sync")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
        "-w", "-t", "60", "start")
    try:
        yield f"postgresql://kiln@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _admin(server: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry database on the backend the test is parametrized with."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"kiln_test_{uuid.uuid4().hex[:12]}"
    _admin(server, f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        _admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
