"""Speed, size and memory of a package, measured through ``kiln.runtime`` so every format is timed alike.

Speed and size come from ``kiln.runtime.measures``; memory is the growth of the process's peak
resident set while loading and running the package.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.runtime.measures import DEFAULT_BATCH_SIZES, measure_speed, package_size_bytes


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
