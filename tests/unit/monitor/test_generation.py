"""Generation windows: the frozen reference window, the current one, and drift between them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kiln.monitor.generation import GenerationWindows, LoggedGeneration
from kiln.monitor.predlog import PredictionLog, read_log
from kiln.monitor.rules import parse_condition
from kiln.monitor.window import evaluate_generation_window
from kiln.serve.generation.recording import GenerationRecord


def _row(prompt_tokens: int, i: int = 0, *, ttft_s: float | None = 0.05) -> LoggedGeneration:
    return LoggedGeneration(
        timestamp=1000.0 + i,
        model="chat",
        version=1,
        package_digest="d" * 64,
        request_id=f"r{i}",
        kind="chat",
        prompt=None,
        output=None,
        prompt_tokens=prompt_tokens,
        output_tokens=8 + i % 3,
        ttft_s=ttft_s,
        latency_s=0.2 + 0.01 * (i % 5),
        finish_reason="length",
    )


def test_generation_windows_freeze_the_first_rows_as_reference() -> None:
    windows = GenerationWindows(window_rows=10)
    for i in range(25):
        windows.add(_row(i, i))
    reference, current = windows.windows("chat", 1)
    assert [r.prompt_tokens for r in reference] == list(range(10))
    assert [r.prompt_tokens for r in current] == list(range(15, 25))  # the latest 10 after it


def test_generation_window_drifts_on_longer_prompts_only() -> None:
    reference = [_row(5 + i % 4, i) for i in range(20)]
    alike = [_row(5 + i % 4, i) for i in range(20, 40)]
    longer = [_row(40 + i % 4, i) for i in range(40, 60)]

    def report(current: list[LoggedGeneration]) -> dict[str, float]:
        return evaluate_generation_window(
            reference, current, model="chat", version=1, reference_rows=20, min_rows=5
        ).values

    assert report(alike)["drifted(prompt_tokens)"] == 0.0
    shifted = report(longer)
    assert shifted["drifted(prompt_tokens)"] == 1.0 and shifted["drifted(output_tokens)"] == 0.0
    assert shifted["mean_prompt_tokens"] == 41.5 and shifted["rows"] == 20
    assert parse_condition("drifted(prompt_tokens) == 1").holds(shifted)


def test_generation_window_reports_traffic_before_its_reference_is_full() -> None:
    filling = [_row(5, i, ttft_s=None if i == 0 else 0.05) for i in range(6)]
    report = evaluate_generation_window(filling, [], model="chat", version=1, reference_rows=20, min_rows=5)
    assert report.columns == [] and report.rows == 6
    assert report.values["p99_ttft"] == 0.05 and "p99_latency" in report.values


def test_a_restarted_log_keeps_each_versions_reference_window(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, window_rows=10)
    for i in range(14):
        log.observe(_record(_row(i, i)))
    log.flush()
    restarted = PredictionLog(tmp_path, window_rows=10)
    assert restarted.restore_generations() == 14
    reference, current = restarted.generations.windows("chat", 1)
    assert [r.prompt_tokens for r in reference] == list(range(10))
    assert [r.prompt_tokens for r in current] == [10, 11, 12, 13]
    assert reference[0].prompt is None  # the texts are not read back
    frame = read_log(tmp_path, "generations")
    assert json.loads(frame["prompt"][0]) == [{"role": "user", "content": "hi 0"}]
    assert set(frame["package_digest"]) == {"d" * 64} and frame["ttft_ms"][0] == 50.0


def _record(row: LoggedGeneration) -> GenerationRecord:
    prompt = [{"role": "user", "content": f"hi {row.prompt_tokens}"}]
    return GenerationRecord(**{**asdict(row), "prompt": prompt, "output": "an answer"})
