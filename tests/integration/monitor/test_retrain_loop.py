"""The closed loop in a real server: a rule fires -> retrain (``kiln train`` child) -> gate -> canary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import SENTENCES
from tests.helpers import tiny_text_recipe, write_recipe
from tests.integration.serve_harness import Running, serving, wait_until

UNIQUE = list(dict.fromkeys(SENTENCES))  # alternating positive / negative reviews


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))  # the registry the loop registers in
    monkeypatch.delenv("KILN_DATABASE_URL", raising=False)
    monkeypatch.delenv("KILN_ARTIFACTS_URL", raising=False)


def _config(package: Path, tmp_path: Path, max_accuracy_drop: float) -> ServeConfig:
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_text_recipe(tmp_path / "unused"))
    rule = {
        "name": "forced",
        "when": "accuracy <= 1",  # holds as soon as feedback exists: a forced trigger
        "retrain": {
            "recipe": str(recipe),
            "canary_percent": 10,
            "max_accuracy_drop": max_accuracy_drop,
            "overrides": ["train.epochs=1", "train.max_steps=2", "train.batch_size=8", "model.vocab_size=120"],
        },
    }
    return ServeConfig.model_validate(
        {
            "models": [ModelConfig(name="s", versions={1: str(package)}).model_dump()],
            "monitor": {
                "enabled": True,
                "log_dir": str(tmp_path / "log"),
                "flush_interval_s": 0.05,
                "eval_interval_s": 3600,  # the test evaluates once every label is in
                "min_window_rows": 10,
                "embed_rows": 0,
                "rules": [rule],
            },
        }
    )


def _traffic_with_feedback(srv: Running, n: int = 40) -> None:
    for i in range(n):
        response = srv.post("/v1/models/s:predict", {"inputs": [f"{UNIQUE[i % len(UNIQUE)]} take {i}"]})
        assert response.status_code == 200
        label = "pos" if (i % len(UNIQUE)) % 2 == 0 else "neg"
        feedback = {"request_id": response.headers["x-request-id"], "label": label}
        assert srv.post("/v1/models/s/feedback", feedback).status_code == 202


def _fire_and_wait(srv: Running) -> object:
    monitor, loop = srv.app.state.monitor, srv.app.state.retrain
    wait_until(lambda: monitor.log.flush() == 0 and len(monitor.log.window("s", 1)) == 40, what="log flush")
    monitor.evaluate()
    wait_until(lambda: len(loop.outcomes) == 1, what="retrain outcome", timeout_s=240)
    return loop.outcomes[0]


def _retrain_history(srv: Running) -> list[dict]:
    return [e for e in srv.get("/v1/monitor/alerts").json()["history"] if e["rule"] == "forced:retrain"]


def test_retrain_loop_serves_gated_version_as_canary(text_package: Path, tmp_path: Path) -> None:
    with serving(_config(text_package, tmp_path, max_accuracy_drop=1.0)) as srv:
        _traffic_with_feedback(srv)
        outcome = _fire_and_wait(srv)
        assert outcome.state == "canary", outcome.reason
        assert outcome.new_version == 2 and "version 2 serves 10% as a canary" in outcome.reason
        info = srv.get("/v1/models").json()[0]
        assert info["versions"] == [1, 2] and info["canary"] == {"1": 90, "2": 10}
        assert srv.get("/v2/models/s/versions/2").status_code == 200
        pinned = srv.post("/v1/models/s/versions/2:predict", {"inputs": ["a moving story"]})
        assert pinned.status_code == 200 and pinned.json()["version"] == 2
        states = [e["state"] for e in _retrain_history(srv)]
        assert states == ["canary", "retraining"]  # newest first
    data = (outcome.run_dir / "data.csv").read_text().splitlines()
    assert data[0] == "text,label" and len(data) == 41


def test_retrain_loop_gate_failure_leaves_serving_unchanged(text_package: Path, tmp_path: Path) -> None:
    manifest_path = text_package / "kiln.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"] = {"validation": {"accuracy": 0.5}}
    manifest_path.write_text(json.dumps(manifest))
    # max drop -0.6: the candidate would need accuracy >= 1.1, which no model reaches.
    with serving(_config(text_package, tmp_path, max_accuracy_drop=-0.6)) as srv:
        _traffic_with_feedback(srv)
        outcome = _fire_and_wait(srv)
        assert outcome.state == "rejected" and "fails the gate >= 1.1000" in outcome.reason
        info = srv.get("/v1/models").json()[0]
        assert info["versions"] == [1] and info["canary"] == {}
        latest = _retrain_history(srv)[0]
        assert latest["state"] == "rejected" and latest["condition"] == outcome.reason
