"""Speed, size and the latency/accuracy trade-off, as evaluate and the compress search measure them."""

from pathlib import Path
from typing import Any

import pytest

from kiln.runtime.measures import measure_speed, package_parameters, package_size_bytes, pareto_front
from kiln.runtime.package import read_manifest
from kiln.runtime.weights import load_torch_model


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


@pytest.mark.parametrize(
    ("points", "front"),
    [
        # (latency ms, accuracy): c is dominated by b (faster and as accurate), e by a.
        ([(10.0, 0.90), (5.0, 0.88), (6.0, 0.88), (2.0, 0.80), (12.0, 0.85)], [3, 1, 0]),
        ([(1.0, 0.5)], [0]),
        ([(3.0, 0.9), (3.0, 0.9)], [0, 1]),  # equal points do not dominate each other
        ([(1.0, 0.9), (2.0, 0.95), (3.0, 0.99)], [0, 1, 2]),
    ],
)
def test_pareto_front_keeps_only_undominated_points(
    points: list[tuple[float, float]], front: list[int]
) -> None:
    assert pareto_front(points) == front


def test_package_size_and_parameters_of_an_image_package(image_package: Path) -> None:
    files = [p for p in image_package.iterdir() if p.is_file()]
    assert package_size_bytes(image_package) == sum(p.stat().st_size for p in files)
    model = load_torch_model(image_package, read_manifest(image_package))
    assert package_parameters(image_package) == sum(t.numel() for t in model.state_dict().values())
