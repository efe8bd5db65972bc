from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config.schema import PromoteConfig
from kiln.monitor.loop import GateRules, gate, passes_gate, write_feedback_rows
from kiln.monitor.predlog import PredictionLog
from kiln.serve.repository import PredictionRecord


@pytest.mark.parametrize(
    ("candidate", "current", "drop", "expected"),
    [
        (0.80, 0.81, 0.02, True),
        (0.78, 0.81, 0.02, False),
        (0.85, 0.81, -0.05, False),
        (0.87, 0.81, -0.05, True),
    ],
)
def test_passes_gate_compares_validation_accuracy_with_margin(
    candidate: float, current: float, drop: float, expected: bool
) -> None:
    is_passed, reason = passes_gate(
        {"validation": {"accuracy": candidate}}, {"validation": {"accuracy": current}}, GateRules(drop)
    )
    assert is_passed is expected and f"{candidate:.4f}" in reason


def test_passes_gate_refuses_candidate_without_metric() -> None:
    assert passes_gate({}, {"accuracy": 0.5}, GateRules()) == (False, "candidate has no accuracy")


def test_passes_gate_accepts_when_serving_version_has_no_metric() -> None:
    is_passed, reason = passes_gate({"accuracy": 0.6}, {}, GateRules())
    assert is_passed and "none to compare" in reason


@pytest.mark.parametrize(("candidate_accuracy", "expected"), [(0.80, True), (0.70, False)])
def test_gate_applies_recipe_rules_against_serving_version_and_skips_baseline_rules(
    candidate_accuracy: float, expected: bool
) -> None:
    promote = PromoteConfig(
        rules=["accuracy >= production.accuracy - 0.02", "p99_latency_ms <= 0.5 * baseline.p99_latency_ms"]
    )
    candidate = {"accuracy": candidate_accuracy, "p99_latency_ms": 9.0}
    current = {"accuracy": 0.81, "p99_latency_ms": 3.0}

    is_passed, reason = gate(candidate, current, promote, GateRules(), "s@1")

    assert is_passed is expected
    assert f"'accuracy >= production.accuracy - 0.02' {'pass' if expected else 'fail'}: " in reason
    assert "production is s@1" in reason
    assert "'p99_latency_ms <= 0.5 * baseline.p99_latency_ms' skip: skipped: no baseline package" in reason


def test_write_feedback_rows_keeps_only_labelled_inputs(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    out = [{"label": "pos", "scores": {"pos": 0.9, "neg": 0.1}}] * 2
    log.observe(PredictionRecord("s", 1, ["good", "fine"], out, 0.01, 1.0, "r1"))
    log.observe(PredictionRecord("s", 1, ["bad"], out[:1], 0.01, 1.0, "r2"))
    log.add_feedback("s", "r1", "neg", index=1)
    log.flush()
    assert write_feedback_rows(tmp_path, "s", tmp_path / "data.csv") == 1
    assert (tmp_path / "data.csv").read_text().splitlines() == ["text,label", "fine,neg"]
