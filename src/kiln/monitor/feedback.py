"""True labels sent back for answered inputs, bounded in count and in age.

Feedback drives retraining, so what a server keeps of it must not grow without limit: past
``max_rows`` labels the oldest go, and labels older than ``max_age_s`` go. Every label dropped
is reported to ``on_drop`` with its reason (``size`` or ``age``) so it shows in a metric.

``floor`` is the time up to which every label has been dropped: a log file whose newest label
is not later than it holds nothing kept, and can be deleted.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

SIZE = "size"
AGE = "age"


@dataclass(frozen=True)
class Feedback:
    """One true label of a logged input."""

    timestamp: float  # the store's clock when it arrived
    model: str
    request_id: str
    index: int  # position of the input in its request
    label: str

    def to_row(self) -> dict[str, Any]:
        """The row written to the feedback log: the fields, by name."""
        return asdict(self)


class FeedbackStore:
    """Labels by (request id, index), newest last; thread-safe."""

    def __init__(
        self,
        *,
        max_rows: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.clock = clock
        self.on_drop = on_drop
        self.floor = float("-inf")
        self._labels: OrderedDict[tuple[str, int], Feedback] = OrderedDict()
        # Not yet written to the log; never more than the store itself may hold.
        self._pending: deque[Feedback] = deque(maxlen=max_rows)
        self._lock = threading.Lock()

    def add(self, model: str, request_id: str, label: str, index: int = 0) -> None:
        """Keep a label (a second label for the same input replaces the first)."""
        entry = Feedback(self.clock(), model, request_id, index, label)
        with self._lock:
            self._labels.pop((request_id, index), None)
            self._labels[(request_id, index)] = entry
            self._pending.append(entry)
            dropped = self._drop_oldest_beyond(self.max_rows)
        self._report(SIZE, dropped)

    def label(self, request_id: str, index: int) -> str | None:
        """The label kept for an input, if any."""
        with self._lock:
            entry = self._labels.get((request_id, index))
        return entry.label if entry is not None else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._labels)

    def prune(self) -> int:
        """Drop labels older than ``max_age_s``; return how many went."""
        cutoff = self.clock() - self.max_age_s
        dropped = 0
        with self._lock:
            while self._labels:
                key, oldest = next(iter(self._labels.items()))
                if oldest.timestamp > cutoff:
                    break
                del self._labels[key]
                dropped += 1
            self.floor = max(self.floor, cutoff)
        self._report(AGE, dropped)
        return dropped

    def drain(self) -> list[Feedback]:
        """The labels added since the last drain, oldest first, to be written to the log."""
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    def restore(self, entries: Iterable[Feedback]) -> None:
        """Take back labels read from the log at start; expired and surplus ones are skipped."""
        cutoff = self.clock() - self.max_age_s
        with self._lock:
            for entry in sorted(entries, key=lambda e: e.timestamp):
                if entry.timestamp > cutoff:
                    self._labels.pop((entry.request_id, entry.index), None)
                    self._labels[(entry.request_id, entry.index)] = entry
            self._drop_oldest_beyond(self.max_rows)
            self.floor = max(self.floor, cutoff)

    def _drop_oldest_beyond(self, limit: int) -> int:
        dropped = 0
        while len(self._labels) > limit:
            _, oldest = self._labels.popitem(last=False)
            self.floor = max(self.floor, oldest.timestamp)
            dropped += 1
        return dropped

    def _report(self, reason: str, count: int) -> None:
        if count and self.on_drop is not None:
            self.on_drop(reason, count)
