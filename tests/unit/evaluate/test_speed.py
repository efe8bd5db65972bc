from pathlib import Path

from kiln.evaluate.speed import measure_package


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
