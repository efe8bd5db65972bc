"""Speed and size of a package, measured through ``kiln.runtime`` so every format is timed alike.

Latency is the wall time of ``Predictor.predict`` on batch-1 calls (preprocessing included, as a
caller sees it); throughput is inputs per second at each batch size; memory is the growth of the
process's peak resident set while loading and running the package.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BATCH_SIZES = (1, 8, 32, 128)


def measure_speed(
    predictor: Any,
    sample_inputs: Sequence[Any],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    latency_runs: int = 50,
    warmup_runs: int = 5,
    min_throughput_s: float = 0.5,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Latency percentiles at batch 1 and throughput per batch size of a loaded package.

    Args:
        predictor: a ``kiln.runtime.Predictor`` (anything with ``predict(list)``).
        sample_inputs: raw inputs, cycled to fill batches.
        batch_sizes: batch sizes to measure throughput at.
        latency_runs: timed batch-1 calls for the percentiles.
        warmup_runs: untimed calls first (allocator, thread pools, lazy init).
        min_throughput_s: time spent per batch size (at least one batch).
        clock: a monotonic clock in seconds.

    Returns:
        ``{"latency_ms": {"p50", "p95", "p99", "mean", "runs"}, "throughput": {bs: inputs/s}}``.
    """
    if len(sample_inputs) == 0:
        raise ValueError("sample_inputs must hold at least one input")
    if latency_runs < 1:
        raise ValueError(f"latency_runs must be >= 1, got {latency_runs}")
    inputs = list(sample_inputs)
    for i in range(warmup_runs):
        predictor.predict([inputs[i % len(inputs)]])
    times = []
    for i in range(latency_runs):
        start = clock()
        predictor.predict([inputs[i % len(inputs)]])
        times.append((clock() - start) * 1000.0)
    ms = np.asarray(times)
    throughput: dict[str, float] = {}
    for size in batch_sizes:
        batch = [inputs[i % len(inputs)] for i in range(size)]
        predictor.predict(batch)  # warm-up at this shape
        done, start = 0, clock()
        while True:
            predictor.predict(batch)
            done += size
            elapsed = clock() - start
            if elapsed >= min_throughput_s:
                break
        throughput[str(size)] = done / elapsed
    return {
        "latency_ms": {
            "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()),
            "runs": latency_runs,
        },
        "throughput": throughput,
    }


def package_size_bytes(path: str | Path) -> int:
    """Bytes on disk of every file in a package folder."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def measure_package(
    path: str | Path,
    sample_inputs: Sequence[Any],
    *,
    num_threads: int | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    latency_runs: int = 50,
    min_throughput_s: float = 0.5,
) -> dict[str, Any]:
    """Load a package on CPU and report its speed, size on disk and peak-memory growth.

    The memory figure is the growth of this process's peak RSS, so it is meaningful for the
    first package measured in a fresh process; later ones only show growth beyond that peak.
    """
    import kiln.runtime

    before = peak_rss_bytes()
    predictor = kiln.runtime.load(path, device="cpu", num_threads=num_threads)
    result = measure_speed(
        predictor,
        sample_inputs,
        batch_sizes=batch_sizes,
        latency_runs=latency_runs,
        min_throughput_s=min_throughput_s,
    )
    result["size_bytes"] = package_size_bytes(path)
    result["peak_rss_delta_bytes"] = peak_rss_bytes() - before
    return result
