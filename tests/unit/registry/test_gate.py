"""The promotion gate's decision: which candidate passes, why the alias stays otherwise, and
comparisons refused when the numbers were measured on other data or another machine."""

import pytest

from kiln.config.schema import PromoteConfig
from kiln.registry.gate import Candidate, Holder, decide

RELATIVE = "accuracy >= production.accuracy - 0.005"
FASTER = "p99_latency_ms <= 0.5 * baseline.p99_latency_ms"
DATA = "sha256:data"


def _candidates() -> list[Candidate]:
    return [
        Candidate("train", "m@4", {"accuracy": 0.90, "p99_latency_ms": 12.0}, DATA),
        Candidate("onnx", "m@5", {"accuracy": 0.90, "p99_latency_ms": 6.0}, DATA),
        Candidate("quantize-dynamic", "m@6", {"accuracy": 0.88, "p99_latency_ms": 3.0}, DATA),
    ]


def _holder(ref: str, metrics: dict[str, float], data: str = DATA, *, is_timed: bool = False) -> Holder:
    return Holder(ref, metrics, data, is_timed_in_run=is_timed)


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
    decision = decide(cfg, _candidates(), {"production": _holder("m@2", {"accuracy": 0.95})})
    assert not decision.is_moved and decision.chosen is None and decision.previous == "m@2"
    assert decision.reason.startswith("no candidate passes the gate; production unchanged (m@2)")
    assert f"m@6 (quantize-dynamic): rule '{RELATIVE}' failed (0.88 >= 0.945; production is m@2)" in decision.reason


def test_gate_candidate_named_step_is_the_only_one_considered() -> None:
    cfg = PromoteConfig(candidate="train", rules=["accuracy >= 0.5"])
    decision = decide(cfg, _candidates(), {"production": _holder("m@1", {"accuracy": 0.5})})
    assert [c.candidate.ref for c in decision.considered] == ["m@4"]
    assert decision.is_moved and "was m@1" in decision.reason


def test_gate_keeps_alias_already_on_the_chosen_version() -> None:
    decision = decide(PromoteConfig(), _candidates(), {"production": _holder("m@5", {"accuracy": 0.9})})
    assert not decision.is_moved and decision.chosen is not None
    assert decision.reason.startswith("m@5 already is production")


def test_gate_fails_rule_when_holder_lacks_the_metric() -> None:
    cfg = PromoteConfig(rules=["p99_latency_ms <= production.p99_latency_ms"])
    holder = _holder("m@1", {"accuracy": 0.9}, is_timed=True)
    decision = decide(cfg, _candidates()[:1], {"production": holder})
    assert not decision.is_moved
    assert "production has no metric 'p99_latency_ms'" in decision.reason


@pytest.mark.parametrize(
    ("baseline_step", "passing"),
    [("train", ["m@5", "m@6"]), ("onnx", ["m@6"]), ("quantize-dynamic", [])],
)
def test_gate_baseline_rule_compares_with_the_named_package_of_the_run(
    baseline_step: str, passing: list[str]
) -> None:
    cfg = PromoteConfig(rules=[FASTER], baseline=baseline_step)
    baseline = next(c for c in _candidates() if c.step == baseline_step)
    decision = decide(cfg, _candidates(), {"production": None}, baseline)
    assert [c.candidate.ref for c in decision.considered if c.is_passing] == passing
    check = decision.considered[2].checks[0]
    assert check.detail.endswith(f"baseline is {baseline.ref} ({baseline_step})")


def test_gate_no_candidate_passing_baseline_rule_says_which_rule_failed_for_each() -> None:
    cfg = PromoteConfig(rules=["p99_latency_ms <= 0.1 * baseline.p99_latency_ms"])
    decision = decide(cfg, _candidates(), {"production": None}, _candidates()[0])
    assert decision.chosen is None and not decision.is_moved
    assert decision.reason.startswith("no candidate passes the gate; production unchanged (no version): ")
    for ref, step, left in [("m@4", "train", 12), ("m@5", "onnx", 6), ("m@6", "quantize-dynamic", 3)]:
        assert f"{ref} ({step}): rule 'p99_latency_ms <= 0.1 * baseline.p99_latency_ms' failed ({left} <= 1.2" in (
            decision.reason
        )


def test_gate_skips_baseline_rule_without_a_baseline_package() -> None:
    decision = decide(PromoteConfig(rules=[FASTER]), _candidates()[:1], {"production": None})
    assert decision.is_moved
    assert decision.considered[0].checks[0].status == "skip"
    assert decision.considered[0].checks[0].detail == "skipped: no baseline package (train) in this run"


def test_gate_refuses_quality_comparison_across_data_fingerprints() -> None:
    cfg = PromoteConfig(rules=[RELATIVE])
    holder = _holder("m@2", {"accuracy": 0.5}, data="sha256:older")
    decision = decide(cfg, _candidates(), {"production": holder})
    assert decision.chosen is None and not decision.is_moved
    check = decision.considered[0].checks[0]
    assert check.status == "fail"
    assert check.detail == (
        "refused: production (m@2) has accuracy measured on data sha256:older, m@4 on data sha256:data; "
        "metrics on different data are not comparable"
    )


def test_gate_compares_latency_across_data_fingerprints_when_timed_in_the_run() -> None:
    cfg = PromoteConfig(rules=["p99_latency_ms <= production.p99_latency_ms"])
    holder = _holder("m@2", {"accuracy": 0.5, "p99_latency_ms": 5.0}, data="sha256:older", is_timed=True)
    decision = decide(cfg, _candidates(), {"production": holder})
    assert decision.chosen is not None and decision.chosen.candidate.ref == "m@6"


def test_gate_refuses_latency_not_timed_in_this_run() -> None:
    cfg = PromoteConfig(rules=["p99_latency_ms <= production.p99_latency_ms"])
    holder = _holder("m@2", {"accuracy": 0.5, "p99_latency_ms": 500.0})
    decision = decide(cfg, _candidates(), {"production": holder})
    assert decision.chosen is None
    assert decision.considered[0].checks[0].detail.startswith(
        "refused: production (m@2) has no p99_latency_ms timed in this run on this machine"
    )


def _language_models() -> list[Candidate]:
    return [
        Candidate("train", "lm@1", {"perplexity": 8.0, "rouge_l": 0.30, "tpot_ms": 20.0}, DATA),
        Candidate("cast", "lm@2", {"perplexity": 8.0, "rouge_l": 0.30, "tpot_ms": 12.0}, DATA),
        Candidate("quantize-torch", "lm@3", {"perplexity": 8.2, "rouge_l": 0.31, "tpot_ms": 9.0}, DATA),
    ]


def test_gate_best_language_model_is_lowest_perplexity_then_fastest_per_token() -> None:
    decision = decide(PromoteConfig(), _language_models(), {"production": None})
    assert decision.chosen is not None and decision.chosen.candidate.ref == "lm@2"
    assert "lowest test perplexity of 3 package(s)" in decision.reason


def test_gate_language_model_rules_on_perplexity_and_time_per_token() -> None:
    rules = ["perplexity <= 1.03 * baseline.perplexity", "tpot_ms <= 0.5 * baseline.tpot_ms"]
    baseline = _language_models()[0]
    decision = decide(PromoteConfig(rules=rules), _language_models(), {"production": None}, baseline)
    assert decision.chosen is not None and decision.chosen.candidate.ref == "lm@3"
    assert [c.is_passing for c in decision.considered] == [False, False, True]


def test_gate_refuses_perplexity_comparison_across_data_fingerprints() -> None:
    cfg = PromoteConfig(rules=["perplexity <= production.perplexity"])
    holder = _holder("lm@0", {"perplexity": 9.0}, "sha256:other")
    decision = decide(cfg, _language_models(), {"production": holder})
    assert not decision.is_moved
    assert "perplexity measured on data sha256:other" in decision.reason
