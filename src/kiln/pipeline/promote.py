"""``kiln run``'s promotion step: read the alias holders, re-time them here, decide, move the alias.

The decision itself is ``kiln.registry.gate.decide`` (pure, shared with the monitor's retraining
loop). This module gathers what it compares: each alias holder's stored quality metrics with the
data fingerprint they were measured on, and its latency timed now, in this run and on this
machine, next to the candidates' (a stored latency from another run or machine is never compared).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.config.rules import LATENCY_METRICS, parse_rule
from kiln.config.schema import PromoteConfig
from kiln.registry.gate import Candidate, Decision, Holder, decide, rule_aliases

if TYPE_CHECKING:
    from kiln.registry import Registry

# Times one package folder (named by the label in what it reports): its latency percentiles and
# size, as kiln.evaluate.time_package gives them.
TimeLatency = Callable[[Path, str], Mapping[str, float]]


def promote(
    registry: Registry,
    name: str,
    cfg: PromoteConfig,
    candidates: Sequence[Candidate],
    *,
    baseline: Candidate | None,
    time_latency: TimeLatency | None,
) -> Decision:
    """Decide with the registry's current alias holders and move ``cfg.alias`` if the gate passes.

    Args:
        registry: where the holders are read and the alias is moved.
        name: the model name.
        cfg: the recipe's promote section.
        candidates: this run's registered packages with the metrics measured on them.
        baseline: the candidate ``cfg.baseline`` names.
        time_latency: times a holder whose latency a rule compares; None: nothing can be timed
            here, so such rules are refused.
    """
    timed = _aliases_timed(cfg)
    holders = {
        alias: _holder(registry, name, alias, candidates, time_latency if alias in timed else None)
        for alias in rule_aliases(cfg)
    }
    decision = decide(cfg, candidates, holders, baseline)
    if decision.is_moved and decision.chosen is not None:
        version = int(decision.chosen.candidate.ref.rsplit("@", 1)[1])
        registry.set_alias(name, cfg.alias, version)
    return decision


def _aliases_timed(cfg: PromoteConfig) -> set[str]:
    """The aliases whose latency some rule compares."""
    return {
        metric.alias
        for text in cfg.rules
        for metric in parse_rule(text).metrics
        if metric.alias is not None and metric.name in LATENCY_METRICS
    }


def _holder(
    registry: Registry, name: str, alias: str, candidates: Sequence[Candidate], time_latency: TimeLatency | None
) -> Holder | None:
    from kiln.registry.errors import NotFoundError

    try:
        version = registry.get_version(f"{name}@{alias}")
    except NotFoundError:
        return None
    stored = {k: float(v) for k, v in version.metrics.items() if isinstance(v, int | float)}
    same = next((c for c in candidates if c.ref == version.ref), None)
    if same is not None:
        # One of this run's packages: its metrics were just measured, latency included.
        return Holder(version.ref, dict(same.metrics), same.data_fingerprint, is_timed_in_run=True)
    if time_latency is None:
        return Holder(version.ref, stored, version.data_fingerprint)
    timed = time_latency(registry.resolve(version.ref), f"{alias} {version.ref}")
    return Holder(version.ref, stored | dict(timed), version.data_fingerprint, is_timed_in_run=True)
