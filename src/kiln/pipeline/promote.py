"""The promotion gate of a recipe: which registered package, if any, the alias moves to.

``decide`` is pure (candidates and the current alias holders in, a decision out);
``promote`` reads the holders from the registry, decides, and moves the alias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kiln.config.rules import COMPARISONS, MissingMetricError, Rule, evaluate, lookup_in, parse_rule
from kiln.config.schema import PromoteConfig

if TYPE_CHECKING:
    from kiln.registry import Registry


@dataclass(frozen=True)
class Candidate:
    """A registered package put to the gate, with the metrics measured on it in this run."""

    step: str  # "train" or the compress step that made it
    ref: str  # its registry reference, name@version
    metrics: Mapping[str, float]  # accuracy, p99_latency_ms, ... (see kiln.config.rules.METRICS)


@dataclass(frozen=True)
class Holder:
    """The version an alias points at now."""

    ref: str  # name@version
    metrics: Mapping[str, Any]  # the metrics recorded on that version


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


@dataclass(frozen=True)
class Decision:
    """What the gate decided and why."""

    alias: str  # the alias the gate moves
    previous: str | None  # the version the alias pointed at before, if any
    chosen: CandidateCheck | None  # the candidate that passed (None: the alias stays)
    is_moved: bool  # whether the alias was moved to the chosen candidate
    reason: str  # one sentence for people
    considered: tuple[CandidateCheck, ...]  # every candidate the gate looked at


def decide(
    cfg: PromoteConfig, candidates: Sequence[Candidate], holders: Mapping[str, Holder | None]
) -> Decision:
    """Apply the recipe's rules to the candidates it names and pick the one to promote.

    ``holders`` maps each alias the rules name (and ``cfg.alias``) to its current version.
    """
    rules = [parse_rule(text) for text in cfg.rules]
    previous = holders.get(cfg.alias)
    pool = _pool(cfg.candidate, candidates)
    considered = tuple(
        CandidateCheck(c, tuple(_check(rule, c, holders) for rule in rules)) for c in pool
    )
    passing = [c for c in considered if c.is_passing]
    previous_ref = previous.ref if previous else None
    if not passing:
        failures = "; ".join(
            f"{c.candidate.ref} ({c.candidate.step}): " + "; ".join(
                f"rule '{r.rule}' failed ({r.detail})" for r in c.checks if r.status == "fail"
            )
            for c in considered
        )
        return Decision(
            alias=cfg.alias,
            previous=previous_ref,
            chosen=None,
            is_moved=False,
            reason=f"{cfg.alias} unchanged ({previous_ref or 'no version'}): {failures}",
            considered=considered,
        )
    chosen = max(enumerate(passing), key=lambda item: _rank(item[1].candidate, item[0]))[1]
    ref = chosen.candidate.ref
    how = (
        f"highest test accuracy of {len(passing)} package(s) passing every rule"
        if cfg.candidate == "best"
        else f"candidate {cfg.candidate!r} passes every rule"
    )
    if ref == previous_ref:
        reason = f"{ref} already is {cfg.alias} ({how})"
    else:
        before = f"was {previous_ref}" if previous_ref else f"no {cfg.alias} version before"
        reason = f"{ref} promoted to {cfg.alias} ({how}; {before})"
    return Decision(cfg.alias, previous_ref, chosen, ref != previous_ref, reason, considered)


def promote(registry: Registry, name: str, cfg: PromoteConfig, candidates: Sequence[Candidate]) -> Decision:
    """Decide with the registry's current alias holders and move ``cfg.alias`` if the gate passes."""
    aliases = {cfg.alias, *(alias for text in cfg.rules for alias in parse_rule(text).aliases)}
    holders = {alias: _holder(registry, name, alias) for alias in sorted(aliases)}
    decision = decide(cfg, candidates, holders)
    if decision.is_moved and decision.chosen is not None:
        version = int(decision.chosen.candidate.ref.rsplit("@", 1)[1])
        registry.set_alias(name, cfg.alias, version)
    return decision


def _pool(candidate: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    if candidate == "best":
        return list(candidates)
    if candidate == "last":
        return list(candidates[-1:])
    named = [c for c in candidates if c.step == candidate]
    return named[-1:]


def _rank(candidate: Candidate, index: int) -> tuple[float, float, int]:
    """Highest accuracy first; then the lowest p99 latency; then the later package."""
    metrics = candidate.metrics
    return (
        float(metrics.get("accuracy", float("-inf"))),
        -float(metrics.get("p99_latency_ms", float("inf"))),
        index,
    )


def _check(rule: Rule, candidate: Candidate, holders: Mapping[str, Holder | None]) -> RuleCheck:
    missing = [alias for alias in rule.aliases if holders.get(alias) is None]
    if missing:
        return RuleCheck(rule.text, "skip", f"skipped: no {', '.join(missing)} version yet")
    holder_metrics = {alias: h.metrics for alias, h in holders.items() if h is not None}
    lookup = lookup_in(candidate.metrics, holder_metrics)
    try:
        left, right = evaluate(rule.left, lookup), evaluate(rule.right, lookup)
    except MissingMetricError as exc:
        return RuleCheck(rule.text, "fail", str(exc).replace("the candidate", candidate.ref))
    except ZeroDivisionError:
        return RuleCheck(rule.text, "fail", "division by zero")
    holds = COMPARISONS[rule.op](left, right)
    against = ", ".join(f"{alias} is {h.ref}" for alias, h in holders.items() if h and alias in rule.aliases)
    detail = f"{left:.6g} {rule.op} {right:.6g}" + (f"; {against}" if against else "")
    return RuleCheck(rule.text, "pass" if holds else "fail", detail)


def _holder(registry: Registry, name: str, alias: str) -> Holder | None:
    from kiln.registry.errors import NotFoundError

    try:
        version = registry.get_version(f"{name}@{alias}")
    except NotFoundError:
        return None
    return Holder(ref=version.ref, metrics=version.metrics)
