"""Logged generation requests and the windows drift compares them in.

A text-generation package carries no reference profile (its evaluation measures perplexity and
answers, not the prompts or the latencies live traffic will bring), so a generation version's
reference is a *reference window*: its first ``window_rows`` logged requests, frozen once full
(a restarted server takes it back from the log's files, as long as retention kept them). The
current window is the latest ``window_rows`` requests logged after it. Prompt length, output
length, time to first token and end-to-end latency are compared between the two with the
classifiers' numeric test (``kiln.monitor.drift.numeric_drift``).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

GENERATIONS = "generations"  # the log's folder of generation records


@dataclass(frozen=True)
class LoggedGeneration:
    """One logged generation request."""

    timestamp: float  # time.time() of the end
    model: str
    version: int
    package_digest: str  # lineage: sha256 of the package's manifest
    request_id: str
    kind: str  # "chat" or "completion"
    prompt: Any  # messages or text, redacted; None when the text is not logged
    output: str | None  # the generated text (so far, when cancelled or timed out), redacted
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None  # None when no token came
    latency_s: float  # queued to the end
    finish_reason: str  # stop, length, cancelled or timeout


def generation_row(record: Any) -> LoggedGeneration:
    """A ``GenerationRecord`` (from the server) as a logged row (the two share their fields)."""
    return LoggedGeneration(**{f.name: getattr(record, f.name) for f in fields(LoggedGeneration)})


def generation_columns(row: LoggedGeneration) -> dict[str, Any]:
    """The Parquet columns of a row (prompt as JSON text, times in milliseconds)."""
    return {
        "timestamp": row.timestamp,
        "model": row.model,
        "version": row.version,
        "package_digest": row.package_digest,
        "request_id": row.request_id,
        "kind": row.kind,
        "prompt": None if row.prompt is None else json.dumps(row.prompt, ensure_ascii=False),
        "output": row.output,
        "prompt_tokens": row.prompt_tokens,
        "output_tokens": row.output_tokens,
        "ttft_ms": None if row.ttft_s is None else row.ttft_s * 1000.0,
        "latency_ms": row.latency_s * 1000.0,
        "finish_reason": row.finish_reason,
    }


def rows_from_generations(frame: Any) -> list[LoggedGeneration]:
    """Logged generations back from a generations DataFrame (``read_log(folder, GENERATIONS)``)."""
    return [
        LoggedGeneration(
            timestamp=float(r.timestamp),
            model=str(r.model),
            version=int(r.version),
            package_digest=str(r.package_digest),
            request_id=str(r.request_id),
            kind=str(r.kind),
            prompt=_text(getattr(r, "prompt", None), json.loads),
            output=_text(getattr(r, "output", None), str),
            prompt_tokens=int(r.prompt_tokens),
            output_tokens=int(r.output_tokens),
            ttft_s=None if r.ttft_ms is None or r.ttft_ms != r.ttft_ms else float(r.ttft_ms) / 1000.0,
            latency_s=float(r.latency_ms) / 1000.0,
            finish_reason=str(r.finish_reason),
        )
        for r in frame.itertuples(index=False)
    ]


def _text(value: Any, parse: Any) -> Any:
    return None if value is None or value != value else parse(value)  # NaN: a missing text


class GenerationWindows:
    """Per generation version: the reference window (first rows, frozen) and the current one."""

    def __init__(self, window_rows: int) -> None:
        self.window_rows = window_rows
        self._reference: dict[tuple[str, int], list[LoggedGeneration]] = {}
        self._current: dict[tuple[str, int], deque[LoggedGeneration]] = {}
        self._lock = threading.Lock()

    def add(self, row: LoggedGeneration) -> None:
        """Put a row in its version's reference while that fills, else in the current window."""
        key = (row.model, row.version)
        with self._lock:
            reference = self._reference.setdefault(key, [])
            if len(reference) < self.window_rows:
                reference.append(row)
            else:
                self._current.setdefault(key, deque(maxlen=self.window_rows)).append(row)

    def keys(self) -> list[tuple[str, int]]:
        """(model, version) pairs with logged generations."""
        with self._lock:
            return sorted(self._reference)

    def windows(self, model: str, version: int) -> tuple[list[LoggedGeneration], list[LoggedGeneration]]:
        """The version's reference rows (full or filling) and the rows logged after it."""
        with self._lock:
            key = (model, version)
            return list(self._reference.get(key, ())), list(self._current.get(key, ()))
