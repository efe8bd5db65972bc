"""Generation requests in the prediction log, and drift alerts on their prompt lengths."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.monitor.predlog import read_log
from kiln.runtime.package import package_digest, read_manifest
from kiln.serve.config import ServeConfig
from tests.helpers import kiln_cli, tiny_generation_package
from tests.integration.serve_harness import Running, StepGate, serving, wait_until

CONTEXT = 128


def mask_digits(text: str) -> str:
    """The redaction hook the tests configure: every digit becomes #."""
    return re.sub(r"\d", "#", text)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_generation_package(tmp_path_factory.mktemp("gen-monitor") / "chat", context_length=CONTEXT)


def _config(package: Path, log_dir: Path, *, models: list[dict[str, Any]], rules: list[dict[str, Any]]) -> ServeConfig:
    return ServeConfig.parse(
        {
            "models": [{"versions": {1: str(package)}, **m} for m in models],
            "monitor": {
                "enabled": True,
                "log_dir": str(log_dir),
                "flush_interval_s": 0.05,
                "eval_interval_s": 0.1,
                "window_rows": 10,
                "min_window_rows": 5,
                "rules": rules,
            },
        },
        source="test",
    )


def _chat(srv: Running, model: str, content: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **fields}
    return srv.post("/v1/chat/completions", body, headers={"X-Request-Id": f"{model}-{content}"})


def test_generation_requests_are_logged_redacted_with_counts_timings_and_lineage(
    package: Path, tmp_path: Path
) -> None:
    hook = f"{__name__}:mask_digits"
    models = [
        {"name": "chat", "generation": {"log": {"redact": hook}}},
        {"name": "counts", "generation": {"log": {"log_text": False}}},
        {"name": "quiet", "generation": {"log": {"sample_rate": 0.0}}},
    ]
    log_dir = tmp_path / "log"
    with serving(_config(package, log_dir, models=models, rules=[])) as srv:
        whole = _chat(srv, "chat", "call 555 0199")
        assert whole.status_code == 200 and whole.headers["x-request-id"] == "chat-call 555 0199"
        body = {"model": "chat", "prompt": "room 42", "max_tokens": 5, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as resp:
            streamed_id = resp.headers["x-request-id"]
            assert streamed_id.startswith("cmpl-") and "[DONE]" in resp.read().decode()
        gate = StepGate(srv, "chat")
        cancelled = threading.Event()
        gate.engine.hooks.cancelled = cancelled.set  # the stream's end reached the server
        body = {"model": "chat", "prompt": "leave at 7", "max_tokens": 50, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as resp:
            wait_until(lambda: gate.engine.waiting == 1, what="the request queued")
            gate.allow(1)
            lines = resp.iter_lines()
            next(line for line in lines if line.startswith("data: "))  # its first piece
        wait_until(cancelled.is_set, what="the disconnect seen")
        gate.open()
        assert _chat(srv, "counts", "secret 123").status_code == 200
        assert _chat(srv, "quiet", "unlogged").status_code == 200
        wait_until(lambda: gate.engine.running == 0, what="the cancelled sequence dropped")
    frame = read_log(log_dir, "generations")
    rows = {r.request_id: r for r in frame.itertuples(index=False)}
    assert set(frame["model"]) == {"chat", "counts"}
    first = rows["chat-call 555 0199"]
    usage = whole.json()["usage"]
    assert json.loads(first.prompt) == [{"role": "user", "content": "call ### ####"}]
    assert first.output == mask_digits(whole.json()["choices"][0]["message"]["content"])
    assert (first.prompt_tokens, first.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert first.kind == "chat" and first.finish_reason == "length" and first.version == 1
    assert first.package_digest == package_digest(read_manifest(package))
    assert 0 < first.ttft_ms <= first.latency_ms
    assert json.loads(rows[streamed_id].prompt) == "room ##" and rows[streamed_id].kind == "completion"
    left = next(r for r in rows.values() if r.finish_reason == "cancelled")
    assert json.loads(left.prompt) == "leave at #" and left.output_tokens < 50
    counted = rows["counts-secret 123"]
    assert counted.prompt is None and counted.output is None and counted.output_tokens == 6


def test_an_alert_fires_when_prompt_lengths_shift(package: Path, tmp_path: Path) -> None:
    rules = [{"name": "prompt-shift", "when": "drifted(prompt_tokens) == 1"}]
    cfg = _config(package, tmp_path / "log", models=[{"name": "chat"}], rules=rules)
    short = [f"hi {i}" for i in range(10)]
    long = [" ".join(["the dog ran in the park"] * 6) + f" {i}" for i in range(10)]
    with serving(cfg) as srv:

        def report() -> dict[str, Any]:
            reports = srv.get("/v1/monitor/reports").json()
            return reports[0]["values"] if reports else {}

        for prompts in (short, short):  # the reference window, then the same traffic again
            for prompt in prompts:
                assert _chat(srv, "chat", prompt, max_tokens=2).status_code == 200
        wait_until(lambda: report().get("rows") == 10 and "drifted(prompt_tokens)" in report(), what="a report")
        assert report()["drifted(prompt_tokens)"] == 0.0
        assert srv.get("/v1/monitor/alerts").json()["active"] == []
        for prompt in long:
            assert _chat(srv, "chat", prompt, max_tokens=2).status_code == 200
        wait_until(lambda: srv.get("/v1/monitor/alerts").json()["active"] != [], what="the alert")
        active = srv.get("/v1/monitor/alerts").json()["active"]
        assert active == [{"rule": "prompt-shift", "model": "chat", "version": 1}]
        assert report()["mean_prompt_tokens"] > 20
        metrics = srv.get("/metrics").text
        assert 'kiln_alert_active{model="chat",rule="prompt-shift",version="1"} 1.0' in metrics
        assert 'feature="prompt_tokens"' in metrics and 'feature="output_tokens"' in metrics
        shown = kiln_cli("monitor", "--url", srv.url)
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"prompt_tokens\s+ks\s+\S+\s+DRIFT", shown.stdout)
        assert "active alerts: prompt-shift@chat" in shown.stdout
