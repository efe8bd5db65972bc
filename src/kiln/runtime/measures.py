"""How fast and how big a package is, and which packages are worth keeping.

Both the evaluate stage (``kiln eval``, ``kiln compare``) and the compress stage's latency-budget
search measure packages with these, so their numbers agree. Latency is the wall time of
``Predictor.predict`` on batch-1 calls (preprocessing included, as a caller sees it); throughput
is inputs per second at each batch size.
"""

from __future__ import annotations

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


def package_parameters(path: str | Path) -> int:
    """Number of stored weight values of a package (int8 weights count one each)."""
    from kiln.runtime.package import read_manifest

    folder = Path(path)
    manifest = read_manifest(folder, verify=False)
    arch = manifest["architecture"]
    if manifest["format"] == "onnx":
        import onnx

        graph = onnx.load(str(folder / arch["file"]), load_external_data=False).graph
        return int(sum(int(np.prod(t.dims)) for t in graph.initializer))
    from safetensors import safe_open

    with safe_open(str(folder / arch["weights"]), framework="np") as weights:
        return int(
            sum(
                _numel(weights.get_slice(k).get_shape())
                for k in weights.keys()  # noqa: SIM118 - safe_open has no __iter__
                if not k.endswith("position_ids")
            )
        )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points that no other point dominates, fastest first.

    A point is dominated when another is at least as fast and at least as accurate, and
    strictly better in one of the two.
    """
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (o_lat <= lat and o_acc >= acc) and (o_lat < lat or o_acc > acc)
            for j, (o_lat, o_acc) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n
