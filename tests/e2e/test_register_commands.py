"""``--register NAME`` on train, compress and eval, and ``name@version``/``name@alias`` in place
of package paths, through the real CLI against a real SQLite registry."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kiln.registry import Registry, resolve_reference
from tests.helpers import kiln_cli, tiny_text_recipe, write_recipe

pytestmark = pytest.mark.slow

Trained = tuple[dict[str, str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A KILN_HOME whose registry holds ``tiny@1`` from ``kiln train --register tiny``."""
    root = tmp_path_factory.mktemp("registered")
    env = {"KILN_HOME": str(root / "home"), "KILN_DATABASE_URL": "", "KILN_ARTIFACTS_URL": "", "KILN_USER": "t"}
    recipe = write_recipe(root / "recipe.yaml", tiny_text_recipe(root / "run", epochs=1))
    result = kiln_cli("train", str(recipe), "--register", "tiny", cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    return env, result


def _registry(env: dict[str, str]) -> Registry:
    home = Path(env["KILN_HOME"])
    return Registry(f"sqlite:///{home / 'registry.db'}", home=home)


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def test_train_register_records_version_with_its_run(trained: Trained) -> None:
    env, result = trained
    assert "registered: tiny@1" in result.stdout
    with _registry(env) as registry:
        version = registry.get_version("tiny@1")
        run = registry.get_run(version.run_id or "")
        assert run.status == "finished" and run.recipe["name"] == "tiny-text"
        assert run.data_fingerprint == version.data_fingerprint
        assert any(p.key == "train/loss" for p in run.metrics)
        assert [e.transformation for e in registry.lineage("tiny@1").edges] == ["train"]


def test_compress_reference_register_links_parent(
    trained: Trained, tmp_path: Path
) -> None:
    env, _ = trained
    result = _ok(
        kiln_cli(
            "compress", "tiny@1", "--steps", "onnx", "--output", str(tmp_path / "out"),
            "--register", "tiny", "num_threads=1", "eval_samples=16", cwd=tmp_path, env=env,
        )
    )
    ref = json.loads(result.stdout.splitlines()[-1])["registered"]
    with _registry(env) as registry:
        (edge,) = registry.store.parent_edges("tiny", int(ref.split("@")[1]))
        assert (edge.parent, edge.transformation) == ("tiny@1", "onnx-export")
        assert registry.get_run(registry.get_version(ref).run_id or "").params["compress.steps"] == "onnx-export"


def test_compress_budget_search_from_a_reference_searches_that_package(
    trained: Trained, tmp_path: Path
) -> None:
    env, _ = trained
    result = kiln_cli(
        "compress", "tiny@1", "--output", str(tmp_path / "search"), "--target-latency-ms", "0.000001",
        "--max-accuracy-drop", "1", "--budget-candidates", "1", "num_threads=1", "eval_samples=16",
        cwd=tmp_path, env=env,
    )
    # The unreachable latency target ends the search with exit 2 after one candidate, from tiny@1's folder.
    assert result.returncode == 2, result.stderr
    assert "budget not met: no candidate reaches the target p50 latency" in result.stderr
    report = json.loads((tmp_path / "search" / "search.json").read_text())
    with _registry(env) as registry:
        assert report["teacher"]["path"] == str(resolve_reference("tiny@1", registry=registry))


def test_eval_alias_register_records_metrics_on_that_version(
    trained: Trained, tmp_path: Path
) -> None:
    env, _ = trained
    with _registry(env) as registry:
        registry.set_alias("tiny", "staging", 1)
        count = len(registry.list_versions("tiny"))

    result = _ok(kiln_cli("eval", "tiny@staging", "--json", "--register", "tiny", cwd=tmp_path, env=env))

    report = json.loads(result.stdout)
    assert "metrics recorded on tiny@1" in result.stderr
    assert (Path(env["KILN_HOME"]) / "evals" / "tiny-1" / "report.json").is_file()
    with _registry(env) as registry:
        assert registry.get_version("tiny@1").metrics["accuracy"] == report["accuracy"]
        assert len(registry.list_versions("tiny")) == count


def test_predict_accepts_version_reference(
    trained: Trained, tmp_path: Path
) -> None:
    env, _ = trained
    result = _ok(kiln_cli("predict", "tiny@1", "a moving story", cwd=tmp_path, env=env))
    line = json.loads(result.stdout)
    assert line["input"] == "a moving story" and "label" in line


def test_predict_unknown_alias_exits_2(
    trained: Trained, tmp_path: Path
) -> None:
    env, _ = trained
    result = kiln_cli("predict", "tiny@canary", "text", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "has no alias 'canary'" in result.stderr
