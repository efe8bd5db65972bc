"""A registry database made by the previous Kiln (schema 0001) upgrades and keeps its data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.registry import Registry, db
from kiln.registry.errors import RegistryError
from kiln.registry.search import MetricFilter, VersionQuery

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def _database_at_0001(url: str) -> None:
    engine = db.make_engine(url)
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0001")
    engine.dispose()


def test_migration_0002_keeps_data_and_makes_it_searchable(
    database_url: str, tmp_path: Path, make_package: Callable[..., Path]
) -> None:
    _database_at_0001(database_url)
    home = tmp_path / "home"
    with pytest.raises(RegistryError, match="at schema revision 0001, this Kiln needs 0002"):
        Registry(database_url, home=home)
    # Data written at 0001 as that schema stored it: versions, JSON tags and metrics, an alias.
    engine = db.make_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO models (name, task, description, created_at, last_version) "
            "VALUES ('old', 'text-classification', '', '2026-11-01 10:00:00', 2)"
        )
        for number, metrics, tags in [(1, '{"accuracy": 0.7, "notes": "x"}', '{"team": "nlp"}'),
                                      (2, '{"accuracy": 0.9, "ok": true}', "{}")]:
            conn.exec_driver_sql(
                "INSERT INTO versions (model_id, number, package_digest, format, precision, metrics, "
                "tags, description, created_at, created_by, data_fingerprint) VALUES "
                f"(1, {number}, '{number:064x}', 'torch', 'fp32', '{metrics}', '{tags}', '', "
                f"'2026-11-0{number} 10:00:00', 'me', '')"
            )
        conn.exec_driver_sql(
            "INSERT INTO aliases (model_id, name, version_id, updated_at) "
            "VALUES (1, 'production', 1, '2026-11-03 10:00:00')"
        )
    engine.dispose()

    result = CliRunner().invoke(app, ["registry", "--db", database_url, "migrate"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "registry schema: 0001 -> 0002"

    with Registry(database_url, home=home) as reg:
        assert [v.version for v in reg.list_versions("old")] == [1, 2]
        assert reg.get_version("old@production").metrics == {"accuracy": 0.7, "notes": "x"}
        assert reg.get_version("old@latest").version == 2
        tagged = reg.search(VersionQuery(tags={"team": "nlp"}))
        assert [v.ref for v in tagged.versions] == ["old@1"]
        good = reg.search(VersionQuery(metrics=(MetricFilter.parse("accuracy>=0.8"),)))
        assert [v.ref for v in good.versions] == ["old@2"]
        # The counter survived: the next registration is version 3.
        assert reg.register(make_package(), name="old").version == 3
