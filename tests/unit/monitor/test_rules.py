from __future__ import annotations

import pytest

from kiln.monitor.rules import Condition, parse_condition


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("psi(prediction) > 0.2 for 5m", Condition("psi(prediction)", ">", 0.2, 300.0)),
        ("p99_latency > 50ms", Condition("p99_latency", ">", 0.05, 0.0)),
        ("accuracy < 0.8", Condition("accuracy", "<", 0.8, 0.0)),
        ("drift_share >= 50% for 30s", Condition("drift_share", ">=", 0.5, 30.0)),
    ],
)
def test_rules_parse_examples(text: str, expected: Condition) -> None:
    assert parse_condition(text) == expected


@pytest.mark.parametrize(
    "text", ["__import__('os') > 1", "accuracy < 0.8; rm", "p99(latency) > 1", "bogus > 1", "psi > 1"]
)
def test_rules_refuse_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_condition(text)


def test_rules_condition_holds_only_when_measured() -> None:
    cond = parse_condition("accuracy < 0.8")
    assert cond.holds({"accuracy": 0.7}) is True
    assert cond.holds({"accuracy": 0.9}) is False
    assert cond.holds({}) is None
