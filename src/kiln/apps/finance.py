"""Financial news sentiment monitoring: the rolling share of negative headlines, overall and per
entity, with an alert when a window's share rises above its reference by a set margin.

The monitor is fed one prediction at a time (``observe``) and keeps only counts, so it runs over
an unbounded stream; ``kiln replay`` feeds it headlines scored by a served model. It stands alone
so that a monitoring stage can route its alerts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.config.schema import SentimentMonitorConfig

OVERALL = "(all)"


@dataclass(frozen=True)
class Alert:
    """A window whose negative share rose above the reference by more than the margin."""

    window: int  # window number, from 1
    entity: str  # the entity, or "(all)" for every headline
    negative_share: float  # the window's share of negative predictions
    reference: float  # the reference share
    count: int  # headlines in the window (about the entity)

    def message(self) -> str:
        """One line for people."""
        return (
            f"window {self.window}: negative share of {self.entity} is {self.negative_share:.0%} "
            f"over {self.count} headlines (reference {self.reference:.0%})"
        )


@dataclass
class WindowSummary:
    """What one full window saw."""

    window: int
    negative_share: float
    count: int
    entities: dict[str, tuple[float, int]] = field(default_factory=dict)  # entity -> (share, count)


class NegativeShareMonitor:
    """Counts negative predictions per tumbling window of ``window_size`` headlines."""

    def __init__(self, cfg: SentimentMonitorConfig, reference_share: float) -> None:
        self.cfg = cfg
        self.reference = reference_share
        self.windows: list[WindowSummary] = []
        self.alerts: list[Alert] = []
        self._patterns = {
            name: re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")\b", re.IGNORECASE)
            for name, keywords in cfg.entities.items()
            if keywords
        }
        self._reset()

    def entities_of(self, text: str) -> list[str]:
        """The entities a headline mentions."""
        return [name for name, pattern in self._patterns.items() if pattern.search(text)]

    def observe(self, text: str, label: str) -> list[Alert]:
        """Count one scored headline; return the alerts of the window it completes (if any)."""
        is_negative = label == self.cfg.negative_label
        self._counts[OVERALL][0] += is_negative
        self._counts[OVERALL][1] += 1
        for name in self.entities_of(text):
            counts = self._counts.setdefault(name, [0, 0])
            counts[0] += is_negative
            counts[1] += 1
        if self._counts[OVERALL][1] < self.cfg.window_size:
            return []
        return self._close_window()

    def observe_all(self, scored: Iterable[tuple[str, str]]) -> list[Alert]:
        """Count many (headline, label) pairs; return every alert raised."""
        raised: list[Alert] = []
        for text, label in scored:
            raised += self.observe(text, label)
        return raised

    def _close_window(self) -> list[Alert]:
        number = len(self.windows) + 1
        summary = WindowSummary(number, 0.0, 0)
        raised = []
        for name, (negatives, count) in self._counts.items():
            share = negatives / count if count else 0.0
            if name == OVERALL:
                summary.negative_share, summary.count = share, count
            else:
                summary.entities[name] = (share, count)
            is_enough = name == OVERALL or count >= self.cfg.min_entity_count
            if is_enough and share > self.reference + self.cfg.margin:
                raised.append(Alert(number, name, share, self.reference, count))
        self.windows.append(summary)
        self.alerts += raised
        self._reset()
        return raised

    def _reset(self) -> None:
        self._counts: dict[str, list[int]] = {OVERALL: [0, 0]}
