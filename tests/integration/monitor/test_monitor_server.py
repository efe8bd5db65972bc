from __future__ import annotations

from pathlib import Path

from kiln.monitor.predlog import read_log
from kiln.runtime.profile import write_reference_profile
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import SENTENCES
from tests.integration.monitor.webhook import webhook_receiver
from tests.integration.serve_harness import serving, wait_until


def _config(package: Path, log_dir: Path, hook: str, rules: list[dict]) -> ServeConfig:
    return ServeConfig.model_validate(
        {
            "models": [ModelConfig(name="s", versions={1: str(package)}).model_dump()],
            "monitor": {
                "enabled": True,
                "log_dir": str(log_dir),
                "flush_interval_s": 0.05,
                "eval_interval_s": 0.1,
                "min_window_rows": 10,
                "webhook_url": hook,
                "rules": rules,
            },
        }
    )


def test_monitor_server_logs_feedback_and_fires_alert_to_webhook(text_package: Path, tmp_path: Path) -> None:
    write_reference_profile(text_package, SENTENCES)
    log_dir = tmp_path / "log"
    rules = [{"name": "low-accuracy", "when": "accuracy < 0.5"}, {"name": "slow", "when": "p99_latency > 100s"}]
    with webhook_receiver() as (hook, received), serving(_config(text_package, log_dir, hook, rules)) as srv:
        ids = []
        for text in SENTENCES[:12]:
            response = srv.post("/v1/models/s:predict", {"inputs": [text]})
            assert response.status_code == 200
            ids.append((response.headers["x-request-id"], response.json()["outputs"][0]["label"]))
        for request_id, predicted in ids:  # every label is wrong: accuracy 0
            wrong = "pos" if predicted == "neg" else "neg"
            assert srv.post("/v1/models/s/feedback", {"request_id": request_id, "label": wrong}).status_code == 202
        wait_until(lambda: any(e["rule"] == "low-accuracy" for e in received), what="webhook alert")
        alert = next(e for e in received if e["rule"] == "low-accuracy")
        assert alert["state"] == "firing" and alert["model"] == "s" and alert["value"] == 0.0
        assert not any(e["rule"] == "slow" for e in received)
        metrics = srv.get("/metrics").text
        assert 'kiln_alert_active{model="s",rule="low-accuracy",version="1"} 1.0' in metrics
        assert "kiln_drift_score{" in metrics and 'feature="length"' in metrics
        history = srv.get("/v1/monitor/alerts").json()
        assert history["active"] == [{"rule": "low-accuracy", "model": "s", "version": 1}]
        report = srv.get("/v1/monitor/reports").json()[0]
        assert report["values"]["accuracy"] == 0.0 and report["rows"] == 12
        assert srv.post("/v1/models/s/feedback", {"request_id": "x", "label": "nope"}).status_code == 400
    frame = read_log(log_dir)
    assert len(frame) == 12 and set(frame["request_id"]) == {i for i, _ in ids}
    assert len(read_log(log_dir, "feedback")) == 12


def test_monitor_server_sample_rate_zero_logs_nothing(text_package: Path, tmp_path: Path) -> None:
    cfg = _config(text_package, tmp_path / "log", "http://127.0.0.1:9/none", [])
    cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"sample_rate": 0.0})})
    with serving(cfg) as srv:
        for text in SENTENCES[:5]:
            assert srv.post("/v1/models/s:predict", {"inputs": [text]}).status_code == 200
    assert len(read_log(tmp_path / "log")) == 0


def test_monitor_server_feedback_is_404_when_monitoring_off(text_package: Path) -> None:
    cfg = ServeConfig(models=[ModelConfig(name="s", versions={1: str(text_package)})])
    with serving(cfg) as srv:
        response = srv.post("/v1/models/s/feedback", {"request_id": "r", "label": "pos"})
        assert response.status_code == 404 and "monitoring is off" in response.json()["error"]
