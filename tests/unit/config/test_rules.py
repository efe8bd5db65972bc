"""The promotion rule grammar: parsing, evaluation, and refusals that say where."""

import pytest

from kiln.config import parse_recipe
from kiln.config.rules import Metric, MissingMetricError, RuleError, evaluate, lookup_in, parse_rule
from kiln.errors import ConfigError


def _value(text: str, candidate: dict, holders: dict | None = None) -> tuple[float, float]:
    rule = parse_rule(text)
    lookup = lookup_in(candidate, holders or {})
    return evaluate(rule.left, lookup), evaluate(rule.right, lookup)


def test_rules_parse_relative_rule_with_alias_metric() -> None:
    rule = parse_rule("accuracy >= production.accuracy - 0.005")
    assert rule.op == ">="
    assert rule.left == Metric("accuracy", None)
    assert rule.aliases == ("production",)
    assert _value(rule.text, {"accuracy": 0.8}, {"production": {"accuracy": 0.9}}) == pytest.approx((0.8, 0.895))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p99_latency_ms <= 10", (4.0, 10.0)),
        ("p99_latency_ms * 2 + 1 < (10 - 2) / 2", (9.0, 4.0)),
        ("-ece > -1e-1", (-0.05, -0.1)),
        ("size_mb != .5", (3.0, 0.5)),
    ],
)
def test_rules_evaluate_arithmetic_with_precedence(text: str, expected: tuple[float, float]) -> None:
    assert parse_rule(text).aliases == ()
    assert _value(text, {"p99_latency_ms": 4.0, "ece": 0.05, "size_mb": 3.0}) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("accuracy = 0.9", "unexpected character '=' at position 10"),
        ("acuracy >= 0.9", "unknown metric 'acuracy' at position 1"),
        ("production.acc >= 0.9", "unknown metric 'acc' at position 12"),
        ("accuracy >=", "expected a number, a metric or '(' but the rule ends"),
        ("accuracy 0.9", "expected a comparison"),
        ("(accuracy >= 0.9", "expected ')'"),
        ("accuracy >= 0.9 0.1", "unexpected '0.1' after the end of the rule"),
        ("__import__ >= 1", "unknown metric '__import__'"),
        ("open('x') >= 1", "unexpected character \"'\" at position 6"),
        ("", "empty rule"),
    ],
)
def test_rules_refuse_bad_text_saying_where(text: str, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(text)
    assert fragment in str(caught.value)


def test_rules_baseline_metric_is_not_an_alias() -> None:
    rule = parse_rule("p99_latency_ms <= 0.5 * baseline.p99_latency_ms + production.p99_latency_ms * 0")
    assert rule.uses_baseline and rule.aliases == ("production",)
    assert rule.metrics[1] == Metric("p99_latency_ms", "baseline")
    holders = {"baseline": {"p99_latency_ms": 30.0}, "production": {"p99_latency_ms": 1.0}}
    assert _value(rule.text, {"p99_latency_ms": 8.7}, holders) == pytest.approx((8.7, 15.0))
    assert not parse_rule("accuracy >= production.accuracy").uses_baseline


def test_rules_missing_metric_names_its_owner() -> None:
    rule = parse_rule("p99_latency_ms <= production.p99_latency_ms")
    with pytest.raises(MissingMetricError, match="production has no metric 'p99_latency_ms'"):
        evaluate(rule.right, lookup_in({"p99_latency_ms": 1.0}, {"production": {"accuracy": 0.5}}))


@pytest.mark.parametrize(
    ("promote", "fragment"),
    [
        ({"rules": ["accuracy = 0.9"]}, "promote.rules.0: Value error, unexpected character '='"),
        ({"rules": ["accuracy >= 0.5", "accuracy >= (ece"]}, "promote.rules.1: Value error, expected ')'"),
        ({"alias": "prod uction"}, "promote.alias: String should match pattern"),
        ({"candidate": "onnx"}, "promote.candidate must be one of best, last, train, got 'onnx'"),
        ({"rules": "accuracy >= 0.5"}, "promote.rules: Input should be a valid list"),
        ({"baseline": "onnx"}, "promote.baseline must be a package this recipe makes, one of train, got 'onnx'"),
        ({"alias": "baseline"}, "promote.alias cannot be 'baseline': rules use baseline.metric for promote.baseline"),
        ({"rules": ["baseline.acc >= 0.9"]}, "unknown metric 'acc' at position 10"),
    ],
)
def test_rules_bad_promote_section_names_the_recipe_key(promote: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_recipe({"name": "x", "data": {"dataset": "digits"}, "promote": promote}, source="r.yaml")
    assert fragment in str(caught.value)


def test_rules_promote_candidate_and_baseline_may_name_a_compress_step() -> None:
    raw = {"name": "x", "data": {"dataset": "digits"}, "compress": {"steps": ["onnx"]}}
    raw["promote"] = {"candidate": "onnx", "baseline": "onnx"}
    promote = parse_recipe(raw).promote
    assert promote is not None and promote.baseline == "onnx"
