"""The Python API and the CLI on a real SQLite registry under KILN_HOME."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.registry import Registry, resolve_reference
from kiln.runtime.package import package_digest, read_manifest


def test_registry_register_and_resolve_loads_with_runtime(
    kiln_home: Path, text_package: Path
) -> None:
    import kiln.runtime

    with Registry() as reg:
        version = reg.register(text_package, name="sentiment", tags={"stage": "train"})
        reg.set_alias("sentiment", "production", version.version)
        path = resolve_reference("sentiment@production", registry=reg)
    assert (kiln_home / "registry.db").is_file()
    assert version.package_digest == package_digest(read_manifest(text_package))
    predictions = kiln.runtime.load(path).predict(["a moving story"])
    assert predictions[0]["label"] in {"neg", "pos"}


def test_registry_links_lineage_from_manifest_parent_digest(
    kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    with Registry() as reg:
        run = reg.start_run(name="sentiment", data_fingerprint="sha256:" + "d" * 64)
        trained = reg.register(make_package(), name="m", run=run)
        parent = "sha256:" + trained.package_digest
        reg.register(make_package(parent=parent, transformation="distill"), name="m")
        reg.register(make_package(parent=parent, transformation="quantize-int8"), name="m")
        family = reg.lineage("m@3")
    assert family.root.ref == "m@1"
    assert family.run is not None and family.run.id == run.id
    edges = [(e.parent, e.child, e.transformation) for e in family.edges]
    assert edges == [(None, "m@1", "train"), ("m@1", "m@2", "distill"),
                     ("m@1", "m@3", "quantize-int8")]


def test_registry_gc_removes_artifact_of_deleted_version(
    kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    with Registry() as reg:
        kept = reg.register(make_package(), name="m")
        gone = reg.register(make_package(), name="m")
        reg.delete("m@2")
        assert reg.gc(grace_s=0) == [gone.package_digest]
        assert reg.artifacts.list_digests() == {kept.package_digest}


def test_registry_export_import_round_trip(
    tmp_path: Path, kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    from kiln.registry.transfer import export_models, import_models

    with Registry() as reg:
        first = reg.register(make_package(), name="m")
        reg.register(make_package(parent="m@1", transformation="prune"), name="m")
        reg.set_alias("m", "production", 2)
        assert export_models(reg, ["m"], tmp_path / "m.tar.gz") == 2
    with Registry(f"sqlite:///{tmp_path / 'other.db'}", home=tmp_path / "other") as other:
        assert import_models(other, tmp_path / "m.tar.gz") == ["m@1", "m@2"]
        assert import_models(other, tmp_path / "m.tar.gz") == []  # idempotent
        assert other.get_version("m@production").version == 2
        assert other.store.parent_edges("m", 2)[0].parent == "m@1"
        assert other.get_version("m@1").package_digest == first.package_digest


def test_cli_registry_commands_end_to_end(
    kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    runner = CliRunner()
    base = make_package()
    child = make_package(parent=str(base), transformation="quantize-int8")
    assert runner.invoke(app, ["registry", "migrate"]).output.endswith("-> 0002\n")
    for package in (base, child):
        result = runner.invoke(app, ["registry", "register", str(package), "--name", "m"])
        assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["registry", "alias", "set", "m", "production", "2"]).exit_code == 0
    listing = runner.invoke(app, ["registry", "versions", "m"]).output
    assert "m@2 [production]" in listing
    lineage = runner.invoke(app, ["registry", "lineage", "m@production"]).output
    assert "m@1 (train)" in lineage and "m@2 (quantize-int8)  <-" in lineage
    history = runner.invoke(app, ["registry", "alias", "history", "m"]).output
    assert "production\t- -> 2" in history
    refused = runner.invoke(app, ["registry", "delete", "m@2"])
    assert refused.exit_code == 2 and "production" in refused.output
    bad = runner.invoke(app, ["registry", "show", "m@9"])
    assert bad.exit_code == 2 and "has no version 9" in bad.output
    assert '"version": 1' in runner.invoke(app, ["registry", "show", "m@1"]).output
    assert "m\ttext-classification\tlatest 2" in runner.invoke(app, ["registry", "list"]).output


def test_registry_import_refuses_a_package_digest_that_leads_outside_the_export(
    tmp_path: Path, kiln_home: Path, make_package: Callable[..., Path]
) -> None:
    from kiln.registry.errors import RegistryError
    from kiln.registry.transfer import INDEX_NAME, export_models, import_models

    with Registry() as reg:
        reg.register(make_package(), name="m")
        export_models(reg, ["m"], tmp_path / "export")
    index = json.loads((tmp_path / "export" / INDEX_NAME).read_text())
    index["models"][0]["versions"][0]["package_digest"] = "../../elsewhere"
    (tmp_path / "export" / INDEX_NAME).write_text(json.dumps(index))
    with Registry(f"sqlite:///{tmp_path / 'other.db'}", home=tmp_path / "other") as other:
        with pytest.raises(RegistryError, match=r"m@1 has package_digest '../../elsewhere'"):
            import_models(other, tmp_path / "export")
        assert other.list_models() == []
