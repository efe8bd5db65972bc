"""``kiln run`` end to end: every package registered with lineage and a run, the recipe's gate,
skipping stages whose output exists, and resuming a run killed after training."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kiln.config import parse_recipe
from kiln.registry import Registry
from tests.helpers import kiln_cli, tiny_image_recipe, tiny_text_recipe, write_recipe

pytestmark = pytest.mark.slow

RELATIVE = "accuracy >= production.accuracy - 0.005"
FASTER = "p99_latency_ms <= 0.5 * baseline.p99_latency_ms"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh KILN_HOME (registry database and artifacts) for the subprocesses and this one."""
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KILN_DATABASE_URL", raising=False)
    monkeypatch.delenv("KILN_ARTIFACTS_URL", raising=False)
    monkeypatch.setenv("KILN_USER", "tester")
    return tmp_path / "home"


def _text_recipe(tmp_path: Path, steps: list[str]) -> dict[str, Any]:
    raw = tiny_text_recipe(tmp_path / "run", epochs=1)
    raw["eval"] = {"latency_runs": 20, "num_threads": 1}
    raw["compress"] = {"steps": steps, "num_threads": 1, "eval_samples": 32}
    raw["promote"] = {"alias": "production", "candidate": "best", "rules": [RELATIVE, "p99_latency_ms <= 5000"]}
    return raw


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def test_run_registers_every_package_with_lineage_run_and_production(tmp_path: Path, home: Path) -> None:
    raw = _text_recipe(tmp_path, ["onnx", "quantize-dynamic"])
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)

    result = _ok(kiln_cli("run", str(recipe), cwd=tmp_path))

    with Registry() as registry:
        versions = registry.list_versions("tiny-text")
        assert [(v.version, v.format, v.precision) for v in versions] == [
            (1, "torch", "fp32"),
            (2, "onnx", "fp32"),
            (3, "onnx", "int8"),
        ]
        for v in versions:
            assert {"accuracy", "macro_f1", "ece", "p99_latency_ms", "size_mb"} <= set(v.metrics)
        assert len({v.run_id for v in versions}) == 1
        run = registry.get_run(versions[0].run_id or "")
        assert run.status == "finished"
        assert run.recipe == parse_recipe(raw).model_dump(mode="json")
        assert run.data_fingerprint == versions[0].data_fingerprint != ""
        assert run.code_version.startswith("kiln ")
        assert run.params["model.kind"] == "bert" and run.params["compress.steps"] == "onnx,quantize-dynamic"
        assert {"train/loss", "validation/accuracy"} <= {p.key for p in run.metrics}

        lineage = registry.lineage("tiny-text@3")
        assert lineage.root.ref == "tiny-text@1" and lineage.run is not None and lineage.run.id == run.id
        assert [(e.child, e.parent, e.transformation) for e in lineage.edges] == [
            ("tiny-text@1", None, "train"),
            ("tiny-text@2", "tiny-text@1", "onnx-export"),
            ("tiny-text@3", "tiny-text@2", "quantize-dynamic"),
        ]
        production = registry.get_version("tiny-text@production")
        assert [m.to_version for m in registry.alias_history("tiny-text", "production")] == [production.version]
    assert f"{production.ref} promoted to production" in result.stdout

    tree = _ok(kiln_cli("registry", "lineage", "tiny-text@production")).stdout.splitlines()
    assert tree[0] == f"data {run.data_fingerprint}"
    assert tree[1].strip().startswith(f"run {run.id}")
    assert [line.split()[0] for line in tree[2:]] == ["tiny-text@1", "tiny-text@2", "tiny-text@3"]


def test_run_gate_refuses_worse_model_and_keeps_alias(tmp_path: Path, home: Path) -> None:
    raw = tiny_image_recipe(tmp_path / "run")
    raw["eval"] = {"latency_runs": 10, "num_threads": 1}
    raw["promote"] = {"rules": [RELATIVE]}
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    first = _ok(kiln_cli("run", str(recipe), cwd=tmp_path))
    assert "tiny-digits@1 promoted to production" in first.stdout

    worse = _ok(kiln_cli("run", str(recipe), "train.max_steps=1", cwd=tmp_path))

    assert "promote: no candidate passes the gate; production unchanged (tiny-digits@1)" in worse.stdout
    assert f"tiny-digits@2 (train): rule '{RELATIVE}' failed" in worse.stdout
    with Registry() as registry:
        assert registry.get_version("tiny-digits@production").version == 1
        assert len(registry.alias_history("tiny-digits", "production")) == 1
        versions = registry.list_versions("tiny-digits")
        assert versions[1].metrics["accuracy"] < versions[0].metrics["accuracy"] - 0.005


def test_run_killed_after_training_resumes_without_retraining(tmp_path: Path, home: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", _text_recipe(tmp_path, ["onnx"]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "run", str(recipe)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "run").glob("train-*/stage.json")) and proc.poll() is None:
        assert time.monotonic() < deadline, "training did not finish in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    (package,) = (tmp_path / "run").glob("train-*/package")
    trained_at = (package / "kiln.json").stat().st_mtime_ns

    resumed = _ok(kiln_cli("run", str(recipe), cwd=tmp_path))

    assert "train: skipped" in resumed.stderr and "training into" not in resumed.stderr
    assert (package / "kiln.json").stat().st_mtime_ns == trained_at
    assert "promoted to production" in resumed.stdout
    with Registry() as registry:
        assert [v.ref for v in registry.list_versions("tiny-text")] == ["tiny-text@1", "tiny-text@2"]

    again = _ok(kiln_cli("run", str(recipe), cwd=tmp_path))

    for stage in ("train", "onnx", "evaluate train", "evaluate onnx"):
        assert f"{stage}: skipped" in again.stderr
    for step in ("train", "onnx"):
        assert f"latency {step}: p99 " in again.stderr  # latency is timed again in every run
    assert "run: none (every package was already registered)" in again.stdout
    # The torch package and its ONNX export score the same accuracy, so the p99 latency timed in
    # this run breaks the tie: production stays or moves between the two, and nothing new is made.
    assert "already is production" in again.stdout or "promoted to production" in again.stdout
    with Registry() as registry:
        assert len(registry.list_versions("tiny-text")) == 2
        assert registry.get_version("tiny-text@production").version in (1, 2)


def _digits_recipe(tmp_path: Path, rules: list[str]) -> Path:
    raw = tiny_image_recipe(tmp_path / "run", max_steps=3)
    raw["eval"] = {"latency_runs": 5, "num_threads": 1}
    raw["promote"] = {"rules": rules}
    return write_recipe(tmp_path / "recipe.yaml", raw)


def test_run_gate_passing_no_candidate_exits_0_saying_why(tmp_path: Path, home: Path) -> None:
    # The train package is its own baseline, and never twice as fast as itself.
    recipe = _digits_recipe(tmp_path, [FASTER])

    result = _ok(kiln_cli("run", str(recipe), cwd=tmp_path))

    assert (
        "promote: no candidate passes the gate; production unchanged (no version): "
        f"tiny-digits@1 (train): rule '{FASTER}' failed ("
    ) in result.stdout
    assert "kiln registry lineage tiny-digits@latest" in result.stdout
    assert _ok(kiln_cli("registry", "lineage", "tiny-digits@latest")).stdout.splitlines()[-1].startswith(
        "    tiny-digits@1 (train)"
    )
    with Registry() as registry:
        assert registry.alias_history("tiny-digits", "production") == []

    strict = kiln_cli("run", str(recipe), "--require-promotion", cwd=tmp_path)

    assert strict.returncode == 3, (strict.stdout, strict.stderr)
    assert "error: no candidate passes the promote gate (production not moved)" in strict.stderr


def test_run_gate_times_production_again_and_refuses_other_data(tmp_path: Path, home: Path) -> None:
    recipe = _digits_recipe(tmp_path, ["p99_latency_ms <= 1000 * production.p99_latency_ms"])
    assert "tiny-digits@1 promoted to production" in _ok(kiln_cli("run", str(recipe), cwd=tmp_path)).stdout

    retimed = _ok(kiln_cli("run", str(recipe), "train.max_steps=4", cwd=tmp_path))

    assert "latency production tiny-digits@1: p99 " in retimed.stderr
    assert "tiny-digits@2 promoted to production" in retimed.stdout

    recipe = _digits_recipe(tmp_path, [RELATIVE])
    other_data = _ok(kiln_cli("run", str(recipe), "seed=4", cwd=tmp_path))

    with Registry() as registry:
        before, after = (v.data_fingerprint for v in registry.list_versions("tiny-digits")[1:])
        assert registry.get_version("tiny-digits@production").version == 2
    assert before != after
    assert (
        f"rule '{RELATIVE}' failed (refused: production (tiny-digits@2) has accuracy measured on data {before}, "
        f"tiny-digits@3 on data {after}; metrics on different data are not comparable)"
    ) in other_data.stdout


@pytest.mark.parametrize(
    ("promote", "fragments"),
    [
        ({"rules": ["p99_latency_ms <= 10", "acuracy >= 0.8"]}, ["promote.rules.1", "unknown metric 'acuracy'"]),
        ({"candidate": "distill"}, ["promote.candidate must be one of best, last, train", "'distill'"]),
        ({"rule": ["accuracy >= 0.8"]}, ["promote.rule: unknown key", "rules"]),
    ],
)
def test_run_bad_promote_section_exits_2_naming_the_key(
    tmp_path: Path, home: Path, promote: dict[str, Any], fragments: list[str]
) -> None:
    raw = tiny_image_recipe(tmp_path / "run")
    raw["promote"] = promote
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)

    result = kiln_cli("run", str(recipe), cwd=tmp_path)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    for fragment in [str(recipe), *fragments]:
        assert fragment in result.stderr
    assert not (tmp_path / "run").exists() and not home.exists()


def test_run_forced_redoes_every_stage(tmp_path: Path, home: Path) -> None:
    from kiln.pipeline import run_pipeline

    raw = tiny_image_recipe(tmp_path / "run", max_steps=3)
    raw["eval"] = {"latency_runs": 5, "num_threads": 1}
    recipe = parse_recipe(raw)
    lines: list[str] = []
    with Registry() as registry:
        first = run_pipeline(recipe, registry=registry, report=lines.append)
        lines.clear()
        forced = run_pipeline(recipe, registry=registry, is_forced=True, report=lines.append)

    assert first.decision is None and forced.decision is None  # no promote section: no alias moves
    assert forced.packages[0].skipped == ()
    assert any(line.startswith("train: training into") for line in lines)
    assert not any("skipped" in line for line in lines)
