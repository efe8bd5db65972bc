"""A small, safe grammar for alert conditions (parsed, never evaluated as code).

    condition := metric [ "(" column ")" ] op number [ unit ] [ "for" duration ]
    op        := ">" | ">=" | "<" | "<=" | "==" | "!="
    unit      := "ms" | "s" | "%"          (latencies are in seconds; 50ms == 0.05)
    duration  := number ( "s" | "m" | "h" )

Examples: ``psi(prediction) > 0.2 for 5m``, ``p99_latency > 50ms``, ``accuracy < 0.8``,
``drifted(prompt_tokens) == 1``, ``p99_ttft > 2s``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FUNCTIONS = ("psi", "ks", "ks_p", "chi2_p", "js", "wasserstein", "drifted", "drift_score")
METRICS = (
    "drift_share",
    "accuracy",
    "p50_latency",
    "p95_latency",
    "p99_latency",
    "qps",
    "mean_confidence",
    "confidence_drop",
    "rows",
    # generation versions
    "mean_prompt_tokens",
    "mean_output_tokens",
    "p50_ttft",
    "p95_ttft",
    "p99_ttft",
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_UNITS = {"ms": 0.001, "s": 1.0, "%": 0.01, "": 1.0}
_DURATIONS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(
    r"^\s*(?P<metric>[a-z][a-z0-9_]*)\s*(?:\(\s*(?P<column>[A-Za-z0-9_]+)\s*\))?\s*"
    r"(?P<op>>=|<=|==|!=|>|<)\s*(?P<number>-?\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%)?"
    r"(?:\s+for\s+(?P<duration>\d+(?:\.\d+)?)\s*(?P<dunit>[smh]))?\s*$"
)


@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``key op threshold`` held for ``for_s`` seconds."""

    key: str  # the value it reads, e.g. "psi(prediction)" or "p99_latency"
    op: str  # comparison operator
    threshold: float  # in base units (seconds, fractions)
    for_s: float  # how long it must hold before the alert fires (0: at once)

    def holds(self, values: Mapping[str, float]) -> bool | None:
        """Whether the condition holds; None when the value is not measured (yet)."""
        value = values.get(self.key)
        if value is None:
            return None
        return _OPS[self.op](float(value), self.threshold)


def parse_condition(text: str) -> Condition:
    """Parse a condition.

    Raises:
        ValueError: saying what is expected and what was found.
    """
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"cannot parse condition {text!r}; expected e.g. 'psi(prediction) > 0.2 for 5m', "
            "'p99_latency > 50ms' or 'accuracy < 0.8'"
        )
    metric, column = match["metric"], match["column"]
    if column is not None and metric not in FUNCTIONS:
        raise ValueError(f"{metric}(...) is not a drift function; allowed: {', '.join(FUNCTIONS)}")
    if column is None and metric not in METRICS:
        allowed = ", ".join(METRICS) + ", " + ", ".join(f"{f}(column)" for f in FUNCTIONS)
        raise ValueError(f"unknown metric {metric!r}; allowed: {allowed}")
    threshold = float(match["number"]) * _UNITS[match["unit"] or ""]
    for_s = float(match["duration"]) * _DURATIONS[match["dunit"]] if match["duration"] else 0.0
    key = f"{metric}({column})" if column else metric
    return Condition(key=key, op=match["op"], threshold=threshold, for_s=for_s)
