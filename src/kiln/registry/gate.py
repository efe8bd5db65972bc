"""The promotion gate's decision: which candidate, if any, an alias moves to, and why.

``decide`` is pure: the candidates, the versions the aliases point at now and the run's baseline
package in, a decision out. ``kiln run`` (``kiln.pipeline.promote``) and the monitor's retraining
loop both decide through it, so it sits below the stages, with the aliases it is about.

A rule compares numbers only when they are comparable: an alias holder's quality metrics
(accuracy, macro-F1, ECE) only when measured on the candidate's data fingerprint, and its
latency only when timed in the same run on the same machine. Otherwise the rule fails with a
message saying why, rather than comparing numbers measured on different data or hardware.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from kiln.config.rules import (
    BASELINE,
    COMPARISONS,
    LATENCY_METRICS,
    QUALITY_METRICS,
    MissingMetricError,
    Rule,
    evaluate,
    lookup_in,
    parse_rule,
)
from kiln.config.schema import PromoteConfig


@dataclass(frozen=True)
class Candidate:
    """A package put to the gate, with the metrics measured on it in this run."""

    step: str  # "train" or the compress step that made it
    ref: str  # its registry reference, name@version
    metrics: Mapping[str, float]  # accuracy, p99_latency_ms, ... (see kiln.config.rules.METRICS)
    data_fingerprint: str  # the data its quality metrics were measured on


@dataclass(frozen=True)
class Holder:
    """The version an alias points at now, with the metrics the gate may compare."""

    ref: str  # name@version
    metrics: Mapping[str, float]  # its quality metrics, and its latency when is_timed_in_run
    data_fingerprint: str  # the data its quality metrics were measured on ("" if unknown)
    is_timed_in_run: bool = False  # its latency was timed in this run, on this machine


@dataclass(frozen=True)
class RuleCheck:
    """One rule applied to one candidate."""

    rule: str  # the rule as written
    status: Literal["pass", "fail", "skip"]  # skip: it names an alias that points nowhere yet
    detail: str  # the values compared, or why it was skipped or failed


@dataclass(frozen=True)
class CandidateCheck:
    """Every rule applied to one candidate."""

    candidate: Candidate  # the package
    checks: tuple[RuleCheck, ...]  # one per rule, in recipe order

    @property
    def is_passing(self) -> bool:
        """No rule failed (skipped rules do not count)."""
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> str:
        """The failed rules with their values, for people."""
        return "; ".join(f"rule '{c.rule}' failed ({c.detail})" for c in self.checks if c.status == "fail")


@dataclass(frozen=True)
class Decision:
    """What the gate decided and why."""

    alias: str  # the alias the gate moves
    previous: str | None  # the version the alias pointed at before, if any
    chosen: CandidateCheck | None  # the candidate that passed (None: the alias stays)
    is_moved: bool  # whether the alias was moved to the chosen candidate
    reason: str  # one sentence for people
    considered: tuple[CandidateCheck, ...]  # every candidate the gate looked at


def rule_aliases(cfg: PromoteConfig) -> list[str]:
    """``cfg.alias`` and every alias its rules compare against, sorted."""
    return sorted({cfg.alias, *(alias for text in cfg.rules for alias in parse_rule(text).aliases)})


def decide(
    cfg: PromoteConfig,
    candidates: Sequence[Candidate],
    holders: Mapping[str, Holder | None],
    baseline: Candidate | None = None,
) -> Decision:
    """Apply the recipe's rules to the candidates it names and pick the one to promote.

    Args:
        cfg: the recipe's promote section.
        candidates: the packages of this run, in the order they were made.
        holders: each alias the rules name (and ``cfg.alias``) to its current version, or None.
        baseline: the package ``cfg.baseline`` names, measured in this run; None: rules that
            name ``baseline`` are skipped.
    """
    rules = [parse_rule(text) for text in cfg.rules]
    previous = holders.get(cfg.alias)
    previous_ref = previous.ref if previous else None
    considered = tuple(
        CandidateCheck(c, tuple(_check(rule, c, holders, baseline, cfg.baseline) for rule in rules))
        for c in _pool(cfg.candidate, candidates)
    )
    passing = [c for c in considered if c.is_passing]
    if not passing:
        failures = "; ".join(f"{c.candidate.ref} ({c.candidate.step}): {c.failures}" for c in considered)
        return Decision(
            alias=cfg.alias,
            previous=previous_ref,
            chosen=None,
            is_moved=False,
            reason=f"no candidate passes the gate; {cfg.alias} unchanged ({previous_ref or 'no version'}): {failures}",
            considered=considered,
        )
    chosen = max(enumerate(passing), key=lambda item: _rank(item[1].candidate, item[0]))[1]
    ref = chosen.candidate.ref
    how = (
        f"{_best_by(passing)} of {len(passing)} package(s) passing every rule"
        if cfg.candidate == "best"
        else f"candidate {cfg.candidate!r} passes every rule"
    )
    if ref == previous_ref:
        reason = f"{ref} already is {cfg.alias} ({how})"
    else:
        before = f"was {previous_ref}" if previous_ref else f"no {cfg.alias} version before"
        reason = f"{ref} promoted to {cfg.alias} ({how}; {before})"
    return Decision(cfg.alias, previous_ref, chosen, ref != previous_ref, reason, considered)


def _best_by(passing: Sequence[CandidateCheck]) -> str:
    metrics = passing[0].candidate.metrics
    is_language_model = "perplexity" in metrics and "accuracy" not in metrics
    return "lowest test perplexity" if is_language_model else "highest test accuracy"


def _pool(candidate: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    if candidate == "best":
        return list(candidates)
    if candidate == "last":
        return list(candidates[-1:])
    named = [c for c in candidates if c.step == candidate]
    return named[-1:]


def _rank(candidate: Candidate, index: int) -> tuple[float, float, int]:
    """Highest accuracy (a language model: lowest perplexity) first; then the lowest p99 latency
    (time per output token); then the later package."""
    metrics = candidate.metrics
    if "perplexity" in metrics and "accuracy" not in metrics:
        return (-float(metrics["perplexity"]), -float(metrics.get("tpot_ms", float("inf"))), index)
    return (
        float(metrics.get("accuracy", float("-inf"))),
        -float(metrics.get("p99_latency_ms", float("inf"))),
        index,
    )


def _check(
    rule: Rule,
    candidate: Candidate,
    holders: Mapping[str, Holder | None],
    baseline: Candidate | None,
    baseline_step: str,
) -> RuleCheck:
    missing = [alias for alias in rule.aliases if holders.get(alias) is None]
    if missing:
        return RuleCheck(rule.text, "skip", f"skipped: no {', '.join(missing)} version yet")
    if rule.uses_baseline and baseline is None:
        return RuleCheck(rule.text, "skip", f"skipped: no baseline package ({baseline_step}) in this run")
    refusal = _refusal(rule, candidate, holders, baseline)
    if refusal:
        return RuleCheck(rule.text, "fail", refusal)
    sources = {alias: h.metrics for alias, h in holders.items() if h is not None}
    if baseline is not None:
        sources[BASELINE] = baseline.metrics
    lookup = lookup_in(candidate.metrics, sources)
    try:
        left, right = evaluate(rule.left, lookup), evaluate(rule.right, lookup)
    except MissingMetricError as exc:
        return RuleCheck(rule.text, "fail", str(exc).replace("the candidate", candidate.ref))
    except ZeroDivisionError:
        return RuleCheck(rule.text, "fail", "division by zero")
    holds = COMPARISONS[rule.op](left, right)
    against = [f"{alias} is {h.ref}" for alias, h in holders.items() if h and alias in rule.aliases]
    if rule.uses_baseline and baseline is not None:
        against.append(f"baseline is {baseline.ref} ({baseline.step})")
    detail = f"{left:.6g} {rule.op} {right:.6g}" + (f"; {', '.join(against)}" if against else "")
    return RuleCheck(rule.text, "pass" if holds else "fail", detail)


def _refusal(rule: Rule, candidate: Candidate, holders: Mapping[str, Holder | None], baseline: Candidate | None) -> str:
    """Why the rule's numbers are not comparable with the candidate's ("" when they are)."""
    for metric in rule.metrics:
        if metric.alias is None:
            continue
        other = baseline if metric.alias == BASELINE else holders.get(metric.alias)
        if other is None:
            continue
        if metric.name in QUALITY_METRICS and other.data_fingerprint != candidate.data_fingerprint:
            return (
                f"refused: {metric.alias} ({other.ref}) has {metric.name} measured on data "
                f"{other.data_fingerprint or 'of unknown fingerprint'}, {candidate.ref} on data "
                f"{candidate.data_fingerprint}; metrics on different data are not comparable"
            )
        if metric.name in LATENCY_METRICS and isinstance(other, Holder) and not other.is_timed_in_run:
            return (
                f"refused: {metric.alias} ({other.ref}) has no {metric.name} timed in this run on this "
                "machine; latencies from another run or machine are not comparable"
            )
    return ""
