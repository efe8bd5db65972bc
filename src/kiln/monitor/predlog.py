"""The prediction log: sampled records buffered in memory, written off the request path.

``observe`` (called on the request path) only samples and appends to a deque; a background
thread calls ``flush`` which writes one Parquet file per flush under ``predictions/`` (and
``feedback/``; generation requests under ``generations/``), then enforces retention: prediction
and generation files older than ``retention_s`` go, and the oldest go while they hold more than
``max_log_bytes`` together. Feedback has its own bounds (see
``kiln.monitor.feedback``); a feedback file goes once every label in it has been dropped.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.monitor.feedback import Feedback, FeedbackStore
from kiln.monitor.generation import (
    GENERATIONS,
    GenerationWindows,
    LoggedGeneration,
    generation_columns,
    generation_row,
    rows_from_generations,
)

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"


@dataclass(frozen=True)
class LoggedInput:
    """One logged input with its prediction (a request with n inputs logs n rows)."""

    timestamp: float  # time.time() of the answer
    model: str
    version: int
    request_id: str
    index: int  # position of the input in its request
    input: Any  # the raw input (a text, or a pixel array)
    label: str  # predicted label
    confidence: float  # probability of the predicted label
    latency_s: float  # the request's latency


class PredictionLog:
    """Buffers sampled records and feedback; ``flush`` writes them and keeps recent windows."""

    def __init__(
        self,
        folder: Path,
        *,
        sample_rate: float = 1.0,
        max_buffer_rows: int = 100_000,
        window_rows: int = 500,
        max_log_bytes: int = 1 << 30,
        retention_s: float = 7 * 24 * 3600.0,
        max_feedback_rows: int = 100_000,
        feedback_retention_s: float = 7 * 24 * 3600.0,
        on_feedback_drop: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.sample_rate = sample_rate
        self.max_buffer_rows = max_buffer_rows
        self.window_rows = window_rows
        self.max_log_bytes = max_log_bytes
        self.retention_s = retention_s
        self.clock = clock
        self.dropped = 0  # records refused because the buffer was full
        self.feedback = FeedbackStore(
            max_rows=max_feedback_rows, max_age_s=feedback_retention_s, clock=clock, on_drop=on_feedback_drop
        )
        self._random = random.Random(seed)
        self._pending: deque[Any] = deque()
        self._windows: dict[tuple[str, int], deque[LoggedInput]] = {}
        self.generations = GenerationWindows(window_rows)
        self._lock = threading.Lock()
        self._seq = 0

    def observe(self, record: Any) -> None:
        """Sample a ``PredictionRecord`` into the buffer (cheap: runs on the request path); a
        ``GenerationRecord`` comes sampled already (by its model's ``generation.log``)."""
        is_generation = getattr(record, "log_kind", PREDICTIONS) == GENERATIONS
        if not is_generation and self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        if len(self._pending) >= self.max_buffer_rows:
            self.dropped += 1
            return
        self._pending.append(record)

    def add_feedback(self, model: str, request_id: str, label: str, index: int = 0) -> None:
        """Record the true label of a logged input."""
        self.feedback.add(model, request_id, label, index)

    def restore_feedback(self) -> int:
        """Take back the labels already in the log (at start); return how many are kept."""
        frame = read_log(self.folder, FEEDBACK)
        self.feedback.restore(
            Feedback(float(r.timestamp), str(r.model), str(r.request_id), int(r.index), str(r.label))
            for r in frame.itertuples(index=False)
        )
        self.enforce_retention()  # files holding only labels that expired while the server was down
        return len(self.feedback)

    def restore_generations(self) -> int:
        """Take back the generation rows already in the log, oldest first (at start), so that
        each version keeps its reference window across restarts; return how many were read.
        Only counts and timings are read, never the texts."""
        import pyarrow.parquet as pq

        rows = []
        for path in sorted(self.folder.glob(f"{GENERATIONS}/part-*.parquet")):
            columns = [c for c in pq.read_schema(path).names if c not in ("prompt", "output")]
            rows += rows_from_generations(pq.read_table(path, columns=columns).to_pandas())
        for row in sorted(rows, key=lambda r: r.timestamp):
            self.generations.add(row)
        return len(rows)

    def window(self, model: str, version: int) -> list[LoggedInput]:
        """The most recent logged inputs of a model version, oldest first."""
        with self._lock:
            return list(self._windows.get((model, version), ()))

    def windows(self) -> list[tuple[str, int]]:
        """(model, version) pairs with logged inputs."""
        with self._lock:
            return sorted(self._windows)

    def true_label(self, request_id: str, index: int) -> str | None:
        """Feedback received for an input, if any."""
        return self.feedback.label(request_id, index)

    def flush(self) -> int:
        """Write buffered records and feedback to new Parquet files; return the rows written."""
        records = _drain(self._pending)
        aged = self.feedback.prune()
        feedback = self.feedback.drain()
        generated: list[LoggedGeneration] = []
        rows: list[LoggedInput] = []
        for record in records:
            if getattr(record, "log_kind", PREDICTIONS) == GENERATIONS:
                generated.append(generation_row(record))
            else:
                rows += _rows_of(record)
        for generation in generated:
            self.generations.add(generation)
        with self._lock:
            for row in rows:
                key = (row.model, row.version)
                if key not in self._windows:
                    self._windows[key] = deque(maxlen=self.window_rows)
                self._windows[key].append(row)
        if rows:
            self._write(PREDICTIONS, [_to_columns(r) for r in rows])
        if generated:
            self._write(GENERATIONS, [generation_columns(g) for g in generated])
        if feedback:
            self._write(FEEDBACK, [f.to_row() for f in feedback], at=max(f.timestamp for f in feedback))
        if rows or generated or feedback or aged:
            self.enforce_retention()
        return len(rows) + len(generated)

    def enforce_retention(self, now: float | None = None) -> None:
        """Delete prediction and generation files past ``retention_s``, then the oldest while over
        ``max_log_bytes``; delete feedback files whose every label the store has dropped."""
        now = self.clock() if now is None else now
        files = sorted(
            [*self.folder.glob(f"{PREDICTIONS}/part-*.parquet"), *self.folder.glob(f"{GENERATIONS}/part-*.parquet")],
            key=lambda p: p.stat().st_mtime,
        )
        kept = []
        for path in files:
            if now - path.stat().st_mtime > self.retention_s:
                path.unlink(missing_ok=True)
            else:
                kept.append(path)
        total = sum(p.stat().st_size for p in kept)
        while kept and total > self.max_log_bytes:
            oldest = kept.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
        for path in self.folder.glob(f"{FEEDBACK}/part-*.parquet"):
            if _written_at(path) <= self.feedback.floor:
                path.unlink(missing_ok=True)

    def _write(self, kind: str, rows: list[dict[str, Any]], *, at: float | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.folder / kind
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        # The name starts with the time of its newest row (nanoseconds), which retention reads.
        name = f"part-{round((self.clock() if at is None else at) * 1e9)}-{self._seq:06d}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(folder / name)


def read_log(folder: str | Path, kind: str = PREDICTIONS) -> Any:
    """Every row of a log folder's predictions (or feedback, or generations) as a pandas DataFrame."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted(Path(folder, kind).glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def rows_from_frame(frame: Any) -> list[LoggedInput]:
    """Logged inputs back from a predictions DataFrame (as ``read_log`` returns it)."""
    return [
        LoggedInput(
            timestamp=float(r.timestamp),
            model=str(r.model),
            version=int(r.version),
            request_id=str(r.request_id),
            index=int(r.index),
            input=json.loads(r.input),
            label=str(r.label),
            confidence=float(r.confidence),
            latency_s=float(r.latency_ms) / 1000.0,
        )
        for r in frame.itertuples(index=False)
    ]


def _written_at(path: Path) -> float:
    """The time in a log file's name (``part-<ns>-<seq>.parquet``), in seconds."""
    try:
        return int(path.name.split("-")[1]) / 1e9
    except (IndexError, ValueError):
        return float("inf")  # not a name this log wrote: never deleted by its time


def _drain(queue: deque[Any]) -> list[Any]:
    out = []
    while queue:
        out.append(queue.popleft())
    return out


def _rows_of(record: Any) -> list[LoggedInput]:
    rows = []
    for i, (raw, output) in enumerate(zip(record.inputs, record.outputs, strict=True)):
        scores = output["scores"]
        rows.append(
            LoggedInput(
                timestamp=record.timestamp,
                model=record.model,
                version=record.version,
                request_id=getattr(record, "request_id", "") or "",
                index=i,
                input=raw.tolist() if isinstance(raw, np.ndarray) else raw,
                label=output["label"],
                confidence=float(scores[output["label"]]),
                latency_s=record.latency_s,
            )
        )
    return rows


def _to_columns(row: LoggedInput) -> dict[str, Any]:
    return {
        "timestamp": row.timestamp,
        "model": row.model,
        "version": row.version,
        "request_id": row.request_id,
        "index": row.index,
        "input": json.dumps(row.input),
        "label": row.label,
        "confidence": row.confidence,
        "latency_ms": row.latency_s * 1000.0,
    }
