import json
from pathlib import Path

import pytest

import kiln.runtime
from kiln.compress import CompressError
from kiln.compress.search import SearchConfig, search
from kiln.config.schema import CompressConfig
from kiln.errors import ConfigError
from tests.helpers import kiln_cli

pytestmark = pytest.mark.timeout(180)

FAST = CompressConfig.model_validate(
    {"eval_samples": 32, "num_threads": 1, "distill": {"epochs": 1, "lr": 1e-3}, "prune": {"importance_samples": 16}}
)


def test_search_returns_smallest_package_meeting_a_loose_budget(
    trained_text_package: Path, tmp_path: Path
) -> None:
    budget = SearchConfig(
        target_latency_ms=1000.0, max_accuracy_drop=100.0, prune_fractions=(0.0, 0.5), latency_runs=5
    )
    result = search(trained_text_package, output_dir=tmp_path / "s", budget=budget, config=FAST)
    chosen = result.chosen
    assert result.failure is None and chosen is not None
    assert chosen["meets_latency"] and chosen["meets_accuracy"]
    meeting = [c for c in result.candidates if c["meets_latency"] and c["meets_accuracy"]]
    assert chosen["size_bytes"] == min(c["size_bytes"] for c in meeting)
    assert chosen["size_bytes"] < result.teacher["size_bytes"]
    # Once a package met the budget, fp32 variants that cannot be smaller were not evaluated.
    assert any("not smaller" in s["reason"] for s in result.skipped)
    assert {c["id"] for c in result.candidates} >= {"L2-p0-fp32", "L1-p0-int8"}
    assert result.pareto and set(result.pareto) <= {c["id"] for c in result.candidates}
    report = json.loads(result.report.read_text())
    assert report["chosen"]["id"] == chosen["id"] and report["pareto"] == result.pareto
    student = kiln.runtime.load(chosen["path"])
    assert student.manifest["precision"] in ("fp32", "int8")
    assert len(student.predict(["a fine film"])) == 1
    # Every candidate descends from the teacher with its vocabulary trimmed to the data's tokens.
    trimmed = kiln.runtime.load(tmp_path / "s" / "vocab").manifest
    assert trimmed["metrics"]["vocab_size"]["after"] < trimmed["metrics"]["vocab_size"]["before"]


def test_search_says_which_constraint_failed_and_by_how_much(
    trained_text_package: Path, tmp_path: Path
) -> None:
    budget = SearchConfig(target_latency_ms=1e-6, max_accuracy_drop=5.0, max_candidates=2, latency_runs=5)
    result = search(trained_text_package, output_dir=tmp_path / "s", budget=budget, config=FAST)
    assert result.chosen is None
    assert "target p50 latency of 1e-06 ms" in result.failure and "ms over" in result.failure
    assert len(result.candidates) == 2
    assert any("budget of 2 candidates is spent" in s["reason"] for s in result.skipped)
    assert json.loads(result.report.read_text())["failure"] == result.failure


def test_search_cli_exits_2_when_no_candidate_meets_the_budget(
    trained_text_package: Path, tmp_path: Path
) -> None:
    proc = kiln_cli(
        "compress", str(trained_text_package), "-o", str(tmp_path / "s"),
        "--target-latency-ms", "0.000001", "--max-accuracy-drop", "1", "--budget-candidates", "1",
        "eval_samples=16", "num_threads=1",
    )
    assert proc.returncode == 2, proc.stderr
    assert "budget not met: no candidate reaches the target p50 latency" in proc.stderr
    assert (tmp_path / "s" / "search.json").is_file()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target_latency_ms": 0.0}, "target_latency_ms: Input should be greater than 0 (got 0.0)"),
        ({"max_accuracy_drop": -1.0}, "max_accuracy_drop: Input should be greater than or equal to 0 (got -1.0)"),
        ({"max_candidates": 0}, "max_candidates: Input should be greater than or equal to 1 (got 0)"),
        ({"prune_fractions": (1.0,)}, "prune_fractions.0: Input should be less than 1 (got 1.0)"),
        ({"prune_fractions": ()}, "prune_fractions: Tuple should have at least 1 item"),
        ({"quantizations": ("int4",)}, "quantizations.0: Input should be 'fp32' or 'int8' (got 'int4')"),
        ({"student_layers": (0,)}, "student_layers.0: Input should be greater than or equal to 1 (got 0)"),
        ({"max_candiates": 3}, "max_candiates: unknown key; allowed keys here: latency_runs, max_accuracy_drop"),
    ],
)
def test_search_config_refuses_bad_values_naming_field_range_and_value(settings: dict, message: str) -> None:
    values = {"target_latency_ms": 10.0, "max_accuracy_drop": 1.0, **settings}
    with pytest.raises(ConfigError, match=r"^budget\.yaml: invalid search budget:\n  ") as caught:
        SearchConfig.parse(values, source="budget.yaml")
    assert message in str(caught.value)


def test_search_cli_refuses_a_bad_budget_before_writing(text_package: Path, tmp_path: Path) -> None:
    proc = kiln_cli(
        "compress", str(text_package), "-o", str(tmp_path / "s"), "--target-latency-ms", "0", "--max-accuracy-drop", "1"
    )
    assert proc.returncode == 2, proc.stderr
    assert "kiln compress: invalid search budget:" in proc.stderr
    assert "target_latency_ms: Input should be greater than 0 (got 0.0)" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_search_rejects_student_deeper_than_teacher(trained_text_package: Path, tmp_path: Path) -> None:
    budget = SearchConfig(target_latency_ms=10.0, max_accuracy_drop=1.0, student_layers=(3,))
    with pytest.raises(CompressError, match="deeper than the teacher"):
        search(trained_text_package, output_dir=tmp_path / "s", budget=budget, config=FAST)


def test_search_rejects_packages_without_labelled_data(text_package: Path, tmp_path: Path) -> None:
    budget = SearchConfig(target_latency_ms=10.0, max_accuracy_drop=1.0)
    with pytest.raises(CompressError, match="labelled validation examples"):
        search(text_package, output_dir=tmp_path / "s", budget=budget)


def test_search_cli_needs_both_budget_flags(text_package: Path, tmp_path: Path) -> None:
    proc = kiln_cli("compress", str(text_package), "-o", str(tmp_path / "s"), "--target-latency-ms", "5")
    assert proc.returncode == 2
    assert "needs both --target-latency-ms and --max-accuracy-drop" in proc.stderr
