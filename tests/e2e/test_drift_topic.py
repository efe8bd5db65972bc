"""Embedding drift end to end on a change of topic alone: a sentiment model trained on Rotten
Tomatoes snippets is served with monitoring on; held-back reviews do not drift, while Guardian
headlines chosen to be as long (in the model's tokens) as reviews do, through the embedding
drift score and not through length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.serve.config import ServeConfig
from tests.e2e.monitoring import WINDOW, guardian_headlines, monitored_config, stream
from tests.integration.serve_harness import serving

pytestmark = pytest.mark.slow


def _headlines_as_long_as(texts: list[str], package: Path) -> list[str]:
    """One Guardian headline per text, of the nearest length in the package's own tokens."""
    from tokenizers import Tokenizer

    headlines = guardian_headlines()
    tokenizer = Tokenizer.from_file(str(package / "tokenizer.json"))
    pool = np.asarray([len(e.ids) for e in tokenizer.encode_batch(headlines)], dtype=np.float64)
    chosen = []
    for encoding in tokenizer.encode_batch(texts):
        best = int(np.argmin(np.abs(pool - len(encoding.ids))))
        pool[best] = np.inf  # each headline once
        chosen.append(headlines[best])
    return chosen


def _config(package: Path, log_dir: Path) -> ServeConfig:
    return monitored_config(
        "reviews",
        package,
        log_dir,
        embed_rows=WINDOW,  # all of them embedded
        rules=[{"name": "topic-drift", "when": "drift_score(embedding) >= 0.5"}],
    )


def _report(srv: Any) -> dict[str, Any]:
    srv.app.state.monitor.evaluate()
    response = srv.get("/v1/monitor/reports")
    assert response.status_code == 200, response.text
    [report] = response.json()
    return {"values": report["values"], "columns": {c["column"]: c for c in report["columns"]}}


def test_drift_topic_change_of_same_length_caught_by_embedding(sentiment: dict[str, Any], tmp_path: Path) -> None:
    package, held_back = sentiment["package"], sentiment["held_back"]
    headlines = _headlines_as_long_as(held_back[WINDOW : 2 * WINDOW], package)
    with serving(_config(package, tmp_path / "log")) as srv:
        stream(srv, "reviews", held_back[:WINDOW])
        calm = _report(srv)
        assert calm["values"]["drift_score(embedding)"] < 0.5, calm
        assert srv.get("/v1/monitor/alerts").json()["active"] == []

        stream(srv, "reviews", headlines)
        news = _report(srv)
        assert news["values"]["rows"] == WINDOW
        assert not news["columns"]["length"]["is_drifted"], news["columns"]["length"]  # same length
        assert news["values"]["drift_score(embedding)"] >= 0.5 and news["values"]["drifted(embedding)"] == 1.0, news
        assert all(c["method"] == "ks" for name, c in news["columns"].items() if name.startswith("emb_"))
        alerts = srv.get("/v1/monitor/alerts").json()
        assert alerts["active"] == [{"rule": "topic-drift", "model": "reviews", "version": 1}]
        metrics = srv.get("/metrics").text
        assert 'kiln_alert_active{model="reviews",rule="topic-drift",version="1"} 1.0' in metrics
