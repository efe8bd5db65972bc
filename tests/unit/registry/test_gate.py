"""The promotion gate's decision: which candidate passes, and why the alias stays otherwise."""

from kiln.config.schema import PromoteConfig
from kiln.pipeline.promote import Candidate, Holder, decide

RELATIVE = "accuracy >= production.accuracy - 0.005"


def _candidates() -> list[Candidate]:
    return [
        Candidate("train", "m@4", {"accuracy": 0.90, "p99_latency_ms": 12.0}),
        Candidate("onnx", "m@5", {"accuracy": 0.90, "p99_latency_ms": 6.0}),
        Candidate("quantize-dynamic", "m@6", {"accuracy": 0.88, "p99_latency_ms": 3.0}),
    ]


def test_gate_first_model_passes_on_absolute_rules_alone() -> None:
    cfg = PromoteConfig(rules=[RELATIVE, "p99_latency_ms <= 10"])
    decision = decide(cfg, _candidates(), {"production": None})
    assert decision.is_moved and decision.previous is None
    assert decision.chosen is not None and decision.chosen.candidate.ref == "m@5"
    statuses = {c.candidate.ref: [r.status for r in c.checks] for c in decision.considered}
    assert statuses == {"m@4": ["skip", "fail"], "m@5": ["skip", "pass"], "m@6": ["skip", "pass"]}


def test_gate_best_breaks_accuracy_ties_by_latency() -> None:
    decision = decide(PromoteConfig(), _candidates(), {"production": None})
    assert decision.chosen is not None and decision.chosen.candidate.ref == "m@5"


def test_gate_refuses_worse_model_and_names_the_rule() -> None:
    cfg = PromoteConfig(candidate="last", rules=[RELATIVE])
    decision = decide(cfg, _candidates(), {"production": Holder("m@2", {"accuracy": 0.95})})
    assert not decision.is_moved and decision.chosen is None and decision.previous == "m@2"
    assert "production unchanged (m@2)" in decision.reason
    assert f"m@6 (quantize-dynamic): rule '{RELATIVE}' failed (0.88 >= 0.945; production is m@2)" in decision.reason


def test_gate_candidate_named_step_is_the_only_one_considered() -> None:
    cfg = PromoteConfig(candidate="train", rules=["accuracy >= 0.5"])
    decision = decide(cfg, _candidates(), {"production": Holder("m@1", {"accuracy": 0.5})})
    assert [c.candidate.ref for c in decision.considered] == ["m@4"]
    assert decision.is_moved and "was m@1" in decision.reason


def test_gate_keeps_alias_already_on_the_chosen_version() -> None:
    decision = decide(PromoteConfig(), _candidates(), {"production": Holder("m@5", {"accuracy": 0.9})})
    assert not decision.is_moved and decision.chosen is not None
    assert decision.reason.startswith("m@5 already is production")


def test_gate_fails_rule_when_holder_lacks_the_metric() -> None:
    cfg = PromoteConfig(rules=["p99_latency_ms <= production.p99_latency_ms"])
    decision = decide(cfg, _candidates()[:1], {"production": Holder("m@1", {"accuracy": 0.9})})
    assert not decision.is_moved
    assert "production has no metric 'p99_latency_ms'" in decision.reason
