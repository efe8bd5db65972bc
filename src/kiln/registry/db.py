"""Database engines and migrations: SQLite (WAL) under ``KILN_HOME`` or PostgreSQL by URL.

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so that two writers never both hold
a read snapshot and then fail to upgrade it (SQLITE_BUSY). A writer that finds the lock taken
retries every ``SQLITE_WRITE_RETRY_MS`` (jittered) until ``SQLITE_BUSY_TIMEOUT_MS``: SQLite's own
busy handler backs off to 25-100 ms sleeps, far longer than the 1-3 ms a registration holds the
lock, which put 4 concurrent writers' p99 past 150 ms. Read transactions use a plain deferred
``BEGIN`` and run beside writers under WAL.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from kiln.config.home import kiln_home
from kiln.registry.errors import RegistryError

DATABASE_URL_ENV = "KILN_DATABASE_URL"
DB_FILE_NAME = "registry.db"
SQLITE_BUSY_TIMEOUT_MS = 60_000
# Mean pause between a waiting writer's attempts to take the write lock, in ms (measured in
# bench/registry.py's contention run: a registration holds the lock for 1-3 ms).
SQLITE_WRITE_RETRY_MS = 0.5
WRITE_OPTION = "kiln_write"
# Any constant: the key of the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK_KEY = 7_365_201


def database_url(url: str | None = None) -> str:
    """``url``, else ``$KILN_DATABASE_URL``, else SQLite at ``$KILN_HOME/registry.db``."""
    chosen = url or os.environ.get(DATABASE_URL_ENV)
    if chosen:
        return chosen
    return f"sqlite:///{(kiln_home() / DB_FILE_NAME).resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL, with Kiln's connection settings."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types here
        raise RegistryError(f"registry database URL {url!r} is not valid: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    if backend == "sqlite":
        return _sqlite_engine(parsed.database)
    raise RegistryError(f"registry database URL {url!r}: unsupported backend {backend!r} (use sqlite or postgresql)")


def _sqlite_engine(database: str | None) -> Engine:
    if not database or database == ":memory:":
        raise RegistryError("the registry needs a SQLite file, not an in-memory database")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{database}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below, not the sqlite3 module, open transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(WRITE_OPTION, False):
            _begin_immediate(conn.connection.driver_connection)
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def _begin_immediate(dbapi_connection: Any) -> None:
    """``BEGIN IMMEDIATE``, retried at short jittered intervals while another writer holds the lock."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    dbapi_connection.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(0, 2 * SQLITE_WRITE_RETRY_MS) / 1000)
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


def is_postgresql(engine: Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def _alembic_config(connection: Connection | None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this Kiln."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The migration the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Upgrade the schema to the newest migration; return (revision before, revision after).

    Safe to run from several processes at once: they serialise on a database lock.
    """
    from alembic import command

    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if is_postgresql(engine):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            before = current_revision(conn)
            command.upgrade(_alembic_config(conn), "head")
            after = current_revision(conn)
    assert after is not None
    return before, after


def ensure_schema(engine: Engine) -> None:
    """Migrate an empty database; refuse one at an older or unknown revision.

    Raises:
        RegistryError: the database needs ``kiln registry migrate`` or is from a newer Kiln.
    """
    with engine.connect() as conn:
        revision = current_revision(conn)
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        migrate(engine)
        return
    raise RegistryError(
        f"registry database is at schema revision {revision}, this Kiln needs {head}: "
        "run `kiln registry migrate` (or upgrade Kiln if the database is newer)"
    )
