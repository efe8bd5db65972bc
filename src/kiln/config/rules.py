"""Promotion rules: a small, safe expression grammar for recipe gates (never ``eval``).

A rule compares two arithmetic expressions over numbers and metric names::

    rule    := expr CMP expr              CMP: >= <= > < == !=
    expr    := term (('+' | '-') term)*
    term    := factor (('*' | '/') factor)*
    factor  := NUMBER | NAME | NAME '.' NAME | '(' expr ')' | '-' factor

A bare ``NAME`` is a metric of the candidate package (``accuracy``, ``p99_latency_ms``...);
``ALIAS.NAME`` is that metric of the version the alias points at now (``production.accuracy``);
``baseline.NAME`` is that metric of the run's baseline package (``promote.baseline``, the trained
package by default), measured in the same run: ``p99_latency_ms <= 0.5 * baseline.p99_latency_ms``
holds on any machine where the candidate is twice as fast as the baseline.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Metrics the pipeline measures on every package, the only names a rule may use.
METRICS = (
    "accuracy",
    "macro_f1",
    "ece",
    # text-generation: held-out perplexity and mean token loss; ROUGE-L F1 and exact match of
    # greedy answers to test prompts (instruction data)
    "perplexity",
    "loss",
    "rouge_l",
    "exact_match",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    # text-generation at batch 1: time to first token, time per output token, output tokens/s
    "ttft_ms",
    "tpot_ms",
    "tokens_per_s",
    "size_mb",
)
# Metrics that depend on the data they were measured on (comparable only on the same fingerprint).
QUALITY_METRICS = ("accuracy", "macro_f1", "ece", "perplexity", "loss", "rouge_l", "exact_match")
# Metrics that depend on the machine and its load (comparable only when timed in the same run).
LATENCY_METRICS = ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "ttft_ms", "tpot_ms", "tokens_per_s")
# The reserved owner name of ``baseline.NAME``: the run's baseline package, never an alias.
BASELINE = "baseline"
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>>=|<=|==|!=|[<>()+\-*/.]))"
)


class RuleError(ValueError):
    """A rule that does not parse, or names an unknown metric."""


@dataclass(frozen=True)
class Number:
    value: float  # a literal


@dataclass(frozen=True)
class Metric:
    name: str  # metric name, one of METRICS
    alias: str | None  # None: the candidate's metric; BASELINE: the baseline's; else the alias holder's


@dataclass(frozen=True)
class Negate:
    operand: Expr  # the negated expression


@dataclass(frozen=True)
class Arithmetic:
    op: str  # + - * /
    left: Expr  # left operand
    right: Expr  # right operand


Expr = Number | Metric | Negate | Arithmetic


@dataclass(frozen=True)
class Rule:
    """A parsed rule: ``left op right``, with the text it came from."""

    text: str  # the rule as written
    left: Expr  # left-hand expression
    op: str  # comparison operator
    right: Expr  # right-hand expression

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """Every metric the rule names, left to right."""
        return (*_metrics(self.left), *_metrics(self.right))

    @property
    def aliases(self) -> tuple[str, ...]:
        """The aliases whose current holder the rule compares against (empty: no alias)."""
        return tuple(dict.fromkeys(m.alias for m in self.metrics if m.alias is not None and m.alias != BASELINE))

    @property
    def uses_baseline(self) -> bool:
        """Whether the rule compares against the run's baseline package."""
        return any(m.alias == BASELINE for m in self.metrics)


class MissingMetricError(LookupError):
    """A metric a rule needs has no value."""


def parse_rule(text: str) -> Rule:
    """Parse one rule.

    Raises:
        RuleError: the text is not ``expr CMP expr`` or names an unknown metric; the message
            shows where.
    """
    parser = _Parser(text)
    left = parser.expr()
    op = parser.take_comparison()
    right = parser.expr()
    parser.expect_end()
    return Rule(text=text.strip(), left=left, op=op, right=right)


def check_rule(text: str) -> str:
    """Return ``text`` if it parses as a rule (a pydantic validator), else raise ``RuleError``."""
    parse_rule(text)
    return text


def evaluate(expr: Expr, lookup: Callable[[Metric], float]) -> float:
    """The value of an expression; ``lookup`` gives each metric's value.

    Raises:
        MissingMetricError: from ``lookup``.
        ZeroDivisionError: a division by zero.
    """
    if isinstance(expr, Number):
        return expr.value
    if isinstance(expr, Metric):
        return lookup(expr)
    if isinstance(expr, Negate):
        return -evaluate(expr.operand, lookup)
    return _ARITHMETIC[expr.op](evaluate(expr.left, lookup), evaluate(expr.right, lookup))


def lookup_in(candidate: Mapping[str, float], holders: Mapping[str, Mapping[str, float]]) -> Callable[[Metric], float]:
    """A ``lookup`` over the candidate's metrics and each alias holder's (and ``BASELINE``'s) metrics."""

    def lookup(metric: Metric) -> float:
        source = candidate if metric.alias is None else holders.get(metric.alias)
        owner = "the candidate" if metric.alias is None else metric.alias
        if source is None or metric.name not in source:
            raise MissingMetricError(f"{owner} has no metric {metric.name!r}")
        return float(source[metric.name])

    return lookup


def _metrics(expr: Expr) -> list[Metric]:
    if isinstance(expr, Metric):
        return [expr]
    if isinstance(expr, Negate):
        return _metrics(expr.operand)
    if isinstance(expr, Arithmetic):
        return _metrics(expr.left) + _metrics(expr.right)
    return []


class _Parser:
    """Recursive descent over the tokens of one rule."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                start = len(text) - len(text[pos:].lstrip())
                self._fail(start, f"unexpected character {text[start]!r}")
            assert match is not None
            kind = match.lastgroup or ""
            self.tokens.append((kind, match[kind], match.start(kind)))
            pos = match.end()
        if not self.tokens:
            raise RuleError("empty rule; write e.g. 'accuracy >= 0.8'")
        self.index = 0

    def _fail(self, pos: int, what: str) -> None:
        allowed = ", ".join(METRICS)
        raise RuleError(
            f"{what} at position {pos + 1} in {self.text!r}; a rule is 'expression OP expression' "
            f"with OP one of {' '.join(COMPARISONS)}, numbers, + - * / ( ), and metrics "
            f"({allowed}), alias.metric such as production.accuracy, or baseline.metric such as "
            "baseline.p99_latency_ms"
        )

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _next(self, expected: str) -> tuple[str, str, int]:
        token = self._peek()
        if token is None:
            self._fail(len(self.text.rstrip()), f"expected {expected} but the rule ends")
        assert token is not None
        self.index += 1
        return token

    def take_comparison(self) -> str:
        kind, value, pos = self._next("a comparison")
        if kind != "op" or value not in COMPARISONS:
            self._fail(pos, f"expected a comparison ({' '.join(COMPARISONS)}), found {value!r}")
        return value

    def expect_end(self) -> None:
        token = self._peek()
        if token is not None:
            self._fail(token[2], f"unexpected {token[1]!r} after the end of the rule")

    def expr(self) -> Expr:
        node = self.term()
        while (token := self._peek()) is not None and token[1] in ("+", "-"):
            self.index += 1
            node = Arithmetic(token[1], node, self.term())
        return node

    def term(self) -> Expr:
        node = self.factor()
        while (token := self._peek()) is not None and token[1] in ("*", "/"):
            self.index += 1
            node = Arithmetic(token[1], node, self.factor())
        return node

    def factor(self) -> Expr:
        kind, value, pos = self._next("a number, a metric or '('")
        if kind == "number":
            return Number(float(value))
        if kind == "name":
            return self._metric(value, pos)
        if value == "-":
            return Negate(self.factor())
        if value == "(":
            inner = self.expr()
            kind, close, at = self._next("')'")
            if close != ")":
                self._fail(at, f"expected ')', found {close!r}")
            return inner
        self._fail(pos, f"expected a number, a metric or '(', found {value!r}")
        raise AssertionError("unreachable")

    def _metric(self, first: str, pos: int) -> Metric:
        alias, name = None, first
        token = self._peek()
        if token is not None and token[1] == ".":
            self.index += 1
            kind, second, at = self._next("a metric name after '.'")
            if kind != "name":
                self._fail(at, f"expected a metric name after '{first}.', found {second!r}")
            alias, name, pos = first, second, at
        if name not in METRICS:
            self._fail(pos, f"unknown metric {name!r}")
        return Metric(name=name, alias=alias)
