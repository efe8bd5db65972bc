"""The closed loop in a real server: a rule fires -> retrain (``kiln train`` child) -> gate -> canary."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.runtime.profile import write_reference_profile
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


def _config(
    package: Path,
    tmp_path: Path,
    max_accuracy_drop: float,
    *,
    when: str = "accuracy <= 1",  # holds as soon as feedback exists: a forced trigger
    promote: dict | None = None,
) -> ServeConfig:
    raw = tiny_text_recipe(tmp_path / "unused")
    if promote is not None:
        raw["promote"] = promote
    recipe = write_recipe(tmp_path / "recipe.yaml", raw)
    rule = {
        "name": "forced",
        "when": when,
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


def _traffic_with_feedback(srv: Running, n: int = 40, repeat: int = 1) -> None:
    for i in range(n):
        text = " ".join([UNIQUE[i % len(UNIQUE)]] * repeat)
        response = srv.post("/v1/models/s:predict", {"inputs": [f"{text} take {i}"]})
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
        info = srv.get("/v1/models").json()["data"][0]
        assert info["versions"] == [1, 2] and info["canary"] == {"1": 90, "2": 10}
        assert srv.get("/v2/models/s/versions/2").status_code == 200
        pinned = srv.post("/v1/models/s/versions/2:predict", {"inputs": ["a moving story"]})
        assert pinned.status_code == 200 and pinned.json()["version"] == 2
        states = [e["state"] for e in _retrain_history(srv)]
        assert states == ["canary", "retraining"]  # newest first
    data = (outcome.run_dir / "data.csv").read_text().splitlines()
    holdout = (outcome.run_dir / "holdout.csv").read_text().splitlines()
    assert data[0] == holdout[0] == "text,label" and len(data) == 33 and len(holdout) == 9
    assert not set(data[1:]) & set(holdout[1:])  # the gate's rows were not trained on
    # Both versions were measured on the same held-out rows.
    assert outcome.candidate_metrics["accuracy"] >= outcome.current_metrics["accuracy"] - 1.0
    assert {"accuracy", "p99_latency_ms", "size_mb"} <= set(outcome.candidate_metrics)


def test_retrain_loop_gate_failure_leaves_serving_unchanged(text_package: Path, tmp_path: Path) -> None:
    # max drop -1: the candidate would need the serving accuracy + 1 on the held-out rows.
    with serving(_config(text_package, tmp_path, max_accuracy_drop=-1.0)) as srv:
        _traffic_with_feedback(srv)
        outcome = _fire_and_wait(srv)
        floor = outcome.current_metrics["accuracy"] + 1.0
        assert outcome.state == "rejected" and f"fails the gate >= {floor:.4f}" in outcome.reason
        info = srv.get("/v1/models").json()["data"][0]
        assert info["versions"] == [1] and info["canary"] == {}
        latest = _retrain_history(srv)[0]
        assert latest["state"] == "rejected" and latest["condition"] == outcome.reason


def test_retrain_loop_on_real_drift_goes_through_the_recipe_gate(text_package: Path, tmp_path: Path) -> None:
    """Inputs three times longer than the reference: length drift fires the rule, the retrained
    version passes the recipe's own promote rules and starts as a canary."""
    write_reference_profile(text_package, SENTENCES)
    promote = {"alias": "production", "rules": ["accuracy >= production.accuracy - 1", "p99_latency_ms <= 60000"]}
    config = _config(text_package, tmp_path, max_accuracy_drop=-1.0, when="psi(length) > 0.2", promote=promote)
    with serving(config) as srv:
        _traffic_with_feedback(srv, repeat=3)
        outcome = _fire_and_wait(srv)
        report = srv.get("/v1/monitor/reports").json()[0]
        assert report["values"]["psi(length)"] > 0.2
        fired = [e for e in srv.get("/v1/monitor/alerts").json()["history"] if e["rule"] == "forced"]
        assert fired and fired[-1]["state"] == "firing"
        # The recipe's rules decided (the rule's own max_accuracy_drop of -1 would have refused).
        assert outcome.state == "canary", outcome.reason
        assert "recipe gate passed" in outcome.reason and "'p99_latency_ms <= 60000' pass" in outcome.reason
        assert srv.get("/v1/models").json()["data"][0]["canary"] == {"1": 90, "2": 10}


def test_retrain_loop_recipe_gate_failure_says_which_rule(text_package: Path, tmp_path: Path) -> None:
    promote = {"alias": "production", "rules": ["accuracy >= production.accuracy + 2"]}
    with serving(_config(text_package, tmp_path, max_accuracy_drop=1.0, promote=promote)) as srv:
        _traffic_with_feedback(srv)
        outcome = _fire_and_wait(srv)
        assert outcome.state == "rejected"
        assert "recipe gate failed ('accuracy >= production.accuracy + 2' fail:" in outcome.reason
        assert srv.get("/v1/models").json()["data"][0]["canary"] == {}
