"""Feedback over real HTTP: who may send it, and the bounded store's drop counter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.monitor.predlog import FEEDBACK, read_log
from kiln.registry import Role
from kiln.serve.config import ServeConfig
from tests.helpers import api_token
from tests.integration.serve_harness import serving


def _config(package: Path, log_dir: Path, **settings: Any) -> ServeConfig:
    monitor = {"enabled": True, "log_dir": str(log_dir), "flush_interval_s": 0.05}
    return ServeConfig.model_validate(
        {
            "models": [{"name": "s", "versions": {1: str(package)}}],
            "monitor": monitor | settings.pop("monitor", {}),
            **settings,
        }
    )


def _tokens() -> dict[Role, str]:
    """One API token per role in this test's registry (KILN_HOME)."""
    return {role: api_token(f"{role.value}-user", role) for role in Role}


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_feedback_needs_the_feedback_role_or_stronger(text_package: Path, tmp_path: Path, host: str) -> None:
    tokens = _tokens()
    config = _config(text_package, tmp_path / "log", registry_tokens=True, host=host)

    def bearer(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    with serving(config) as srv:
        answer = srv.post("/v1/models/s:predict", {"inputs": ["fine"]}, headers=bearer(Role.READER))
        request_id = answer.headers["x-request-id"]
        statuses = {
            who: srv.post(
                "/v1/models/s/feedback",
                {"request_id": request_id, "label": "neg" if who is Role.FEEDBACK else "pos"},
                headers=bearer(who) if who is not None else {},
            ).status_code
            for who in (None, Role.READER, Role.FEEDBACK, Role.WRITER)
        }
        refused = srv.post(
            "/v1/models/s/feedback", {"request_id": request_id, "label": "neg"}, headers=bearer(Role.READER)
        )
    assert answer.status_code == 200
    assert statuses == {None: 401, Role.READER: 403, Role.FEEDBACK: 202, Role.WRITER: 202}
    assert "feedback role required, reader-user is reader" in refused.json()["error"]
    stored = read_log(tmp_path / "log", FEEDBACK)
    assert list(stored["label"]) == ["neg", "pos"], "only the feedback and writer labels are stored"


def test_feedback_dropped_past_the_store_size_shows_in_metrics(text_package: Path, tmp_path: Path) -> None:
    config = _config(text_package, tmp_path / "log", monitor={"max_feedback_rows": 3})
    with serving(config) as srv:
        for i in range(5):
            assert srv.post("/v1/models/s/feedback", {"request_id": f"r{i}", "label": "pos"}).status_code == 202
        metrics = srv.get("/metrics").text
    assert 'kiln_feedback_dropped_total{reason="size"} 2.0' in metrics
