"""A throw-away PostgreSQL cluster, started with ``initdb``/``pg_ctl``, for tests and benchmarks.

The cluster listens on a free port on 127.0.0.1, trusts local connections as user ``kiln``, runs
with ``fsync=off`` (its data is thrown away) and, when started as root, runs as an unprivileged
user because ``initdb`` refuses root.

    with postgres_cluster() as server:          # "postgresql://kiln@127.0.0.1:PORT"
        create_database(server, "bench")
        ...                                       # use f"{server}/bench"
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

PG_TOOLS = ("initdb", "pg_ctl", "postgres")
PG_INSTALL_HELP = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in {dirs} or on PATH. "
    "Run `make test` as root or with passwordless sudo so that it runs `apt-get install postgresql`, "
    "or install them yourself (Debian/Ubuntu: `sudo apt-get install -y postgresql`, which puts them "
    "in /usr/lib/postgresql/<version>/bin), or set KILN_TEST_DATABASE_URL to a PostgreSQL server "
    "URL whose user may create databases."
)
# Seconds initdb, pg_ctl start or pg_ctl stop may take before the cluster counts as broken.
COMMAND_TIMEOUT_S = 120


class PostgresError(RuntimeError):
    """The throw-away cluster could not be started (no binaries, no user to run as, a failure)."""


def pg_search_dirs() -> list[Path]:
    """Folders searched before PATH: /usr/local/bin, then Debian's /usr/lib/postgresql/<version>/bin."""
    return [Path("/usr/local/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"))]


def pg_bin_dir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PostgresError: the binaries are not installed (the message says how to install them).
    """
    for folder in pg_search_dirs():
        if all((folder / tool).is_file() for tool in PG_TOOLS):
            return folder
    on_path = shutil.which("initdb")
    if on_path and all((Path(on_path).parent / tool).is_file() for tool in PG_TOOLS):
        return Path(on_path).parent
    raise PostgresError(PG_INSTALL_HELP.format(dirs=", ".join(map(str, pg_search_dirs()))))


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
    raise PostgresError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass(frozen=True)
class PostgresCluster:
    """A running throw-away cluster; ``stop()`` shuts it down and deletes its files."""

    url: str  # server URL without a database, e.g. postgresql://kiln@127.0.0.1:5433
    base: Path  # temporary folder holding the data directory, the socket and the log
    bin_dir: Path  # folder of initdb / pg_ctl / postgres
    prefix: tuple[str, ...]  # command prefix running the server as an unprivileged user, or ()

    @classmethod
    def start(cls) -> PostgresCluster:
        """Create and start a cluster on a free port.

        Raises:
            PostgresError: binaries missing, or initdb / pg_ctl failed (with their output).
        """
        bin_dir = pg_bin_dir()
        prefix, user = _as_user()
        base = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
        port = free_port()
        cluster = cls(url=f"postgresql://kiln@127.0.0.1:{port}", base=base, bin_dir=bin_dir,
                      prefix=tuple(prefix))
        try:
            if user:
                shutil.chown(base, user=user)
            cluster._run("initdb", "-D", str(base / "data"), "-U", "kiln", "--auth=trust",
                         "-E", "UTF8", "--no-sync")
            options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            cluster._run("pg_ctl", "-D", str(base / "data"), "-o", options,
                         "-l", str(base / "log"), "-w", "-t", "60", "start")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.prefix, str(self.bin_dir / tool), *args],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise PostgresError(f"{tool} failed:\n{done.stdout}\n{done.stderr}")

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its files."""
        if (self.base / "data").exists():
            subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D",
                            str(self.base / "data"), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=COMMAND_TIMEOUT_S)
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Run a throw-away cluster for the ``with`` block; yields its server URL (no database)."""
    cluster = PostgresCluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def run_admin(server: str, sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE, say) on the server's ``postgres`` database."""
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def create_database(server: str, name: str) -> str:
    """Create database ``name`` on ``server``; return its URL."""
    run_admin(server, f"CREATE DATABASE {name}")
    return f"{server}/{name}"


def drop_database(server: str, name: str) -> None:
    """Drop database ``name``, closing any connections to it."""
    run_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
