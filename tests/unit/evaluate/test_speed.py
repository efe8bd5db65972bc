from pathlib import Path
from typing import Any

import pytest

from kiln.evaluate.speed import measure_package, measure_speed


class _CountingPredictor:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict(self, inputs: list[Any]) -> list[dict[str, Any]]:
        self.batch_sizes.append(len(inputs))
        return [{"label": "a", "scores": {"a": 1.0}} for _ in inputs]


def test_measure_speed_reports_percentiles_and_throughput_per_batch_size() -> None:
    ticks = iter(range(10_000))
    predictor = _CountingPredictor()
    result = measure_speed(
        predictor,
        ["x", "y"],
        batch_sizes=(1, 4),
        latency_runs=10,
        warmup_runs=2,
        min_throughput_s=3.0,
        clock=lambda: float(next(ticks)),  # every clock read advances one second
    )
    assert result["latency_ms"]["p50"] == pytest.approx(1000.0)
    assert result["latency_ms"]["runs"] == 10
    assert set(result["throughput"]) == {"1", "4"}
    assert result["throughput"]["4"] == pytest.approx(4.0)
    assert 4 in predictor.batch_sizes


def test_measure_speed_refuses_no_inputs() -> None:
    with pytest.raises(ValueError, match="at least one input"):
        measure_speed(_CountingPredictor(), [])


def test_measure_package_reports_size_and_memory(image_package: Path) -> None:
    result = measure_package(
        image_package,
        [list(range(64))],
        num_threads=1,
        batch_sizes=(1, 8),
        latency_runs=5,
        min_throughput_s=0.05,
    )
    files = [p for p in image_package.iterdir() if p.is_file()]
    assert result["size_bytes"] == sum(p.stat().st_size for p in files)
    assert result["peak_rss_delta_bytes"] >= 0
    assert result["latency_ms"]["p99"] >= result["latency_ms"]["p50"] > 0
