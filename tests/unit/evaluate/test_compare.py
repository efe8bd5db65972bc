import json
from pathlib import Path

import pytest

import kiln.compress
import kiln.evaluate
from kiln.compress import Examples
from kiln.errors import KilnError
from kiln.evaluate.compare import CompareError, compare_packages, lineage_packages
from kiln.runtime.measures import pareto_front
from tests.helpers import kiln_cli

pytestmark = pytest.mark.timeout(180)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_eval_speed_reports_latency_throughput_size_and_memory(
    trained_text_package: Path, tmp_path: Path
) -> None:
    result = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(
            package=trained_text_package, output_dir=tmp_path, measure_speed=True, num_threads=1
        )
    )
    speed = result.report["speed"]
    lat = speed["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert set(speed["throughput"]) == {"1", "8", "32", "128"}
    assert speed["size_bytes"] > 100_000 and speed["peak_rss_delta_bytes"] >= 0
    assert json.loads((tmp_path / "report.json").read_text())["speed"]["size_bytes"] == speed["size_bytes"]


def test_compare_lineage_writes_table_chart_and_front(trained_text_package: Path, tmp_path: Path) -> None:
    dataset_texts = ["a fine film", "a dull film", "great", "awful"] * 4
    labels = ["1", "0", "1", "0"] * 4
    examples = Examples(
        eval_inputs=dataset_texts, eval_labels=labels, train_inputs=dataset_texts, train_labels=labels
    )
    kiln.compress.run(
        trained_text_package,
        output_dir=tmp_path / "chain",
        steps=["onnx", "quantize-dynamic"],
        examples=examples,
    )
    packages = lineage_packages(tmp_path / "chain")
    assert [p.name for p in packages] == ["package", "01-onnx", "02-quantize-dynamic"]

    proc = kiln_cli("compare", "--lineage", str(tmp_path / "chain"), "-o", str(tmp_path / "cmp"), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "02-quantize-dynamic" in proc.stdout and "onnx/int8" in proc.stdout
    assert (tmp_path / "cmp" / "accuracy_vs_latency.png").read_bytes()[:8] == PNG_MAGIC
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = report["rows"]
    assert [r["format"] for r in rows] == ["torch", "onnx", "onnx"]
    assert rows[2]["size_bytes"] < rows[0]["size_bytes"]
    assert all(0 <= r["accuracy"] <= 1 and r["parameters"] > 0 for r in rows)
    expected = pareto_front([(r["latency_p50_ms"], r["accuracy"]) for r in rows])
    assert report["pareto"] == expected
    assert [r["pareto"] for r in rows] == [i in expected for i in range(3)]


def test_compare_rejects_nothing_to_compare(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match="nothing to compare"):
        compare_packages([], output_dir=tmp_path)
    with pytest.raises(CompareError, match="no model packages"):
        lineage_packages(tmp_path)


def test_compare_rejects_packages_with_different_labels(
    text_package: Path, tmp_path: Path
) -> None:
    from tests.conftest import make_text_package

    other = make_text_package(tmp_path / "other", labels=("a", "b", "c"))
    with pytest.raises(KilnError, match="different labels"):
        compare_packages([text_package, other], output_dir=tmp_path / "cmp")


def test_compare_cli_without_packages_exits_2(tmp_path: Path) -> None:
    proc = kiln_cli("compare", "-o", str(tmp_path / "cmp"))
    assert proc.returncode == 2
    assert "nothing to compare" in proc.stderr
