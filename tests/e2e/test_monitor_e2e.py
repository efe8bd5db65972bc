"""Monitoring end to end on real data: a sentiment model trained on Rotten Tomatoes snippets,
served with monitoring on; Guardian headlines drift, held-back reviews do not; the dashboard
is checked in headless Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kiln.serve.config import ServeConfig
from tests.browser import BrowserNotFound, find_chromium
from tests.e2e.monitoring import WINDOW, guardian_headlines, monitored_config, stream
from tests.integration.monitor.webhook import webhook_receiver
from tests.integration.serve_harness import serving

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _config(package: Path, log_dir: Path, hook: str) -> ServeConfig:
    return monitored_config(
        "sentiment", package, log_dir, webhook_url=hook, rules=[{"name": "input-drift", "when": "drift_share > 0.3"}]
    )


def test_monitor_drift_fires_on_headlines_not_on_reviews(sentiment: dict[str, Any], tmp_path: Path) -> None:
    with webhook_receiver() as (hook, received), serving(_config(sentiment["package"], tmp_path / "log", hook)) as srv:
        monitor = srv.app.state.monitor
        stream(srv, "sentiment", sentiment["held_back"][:WINDOW])
        [calm] = monitor.evaluate()
        assert calm.rows == WINDOW
        assert calm.values["drift_share"] <= 0.3, calm.to_json()
        assert received == []
        stream(srv, "sentiment", guardian_headlines()[:WINDOW])
        [shifted] = monitor.evaluate()
        drifted = {c.column for c in shifted.columns if c.is_drifted}
        assert shifted.values["drift_share"] > 0.3 and "length" in drifted, shifted.to_json()
        assert [e["rule"] for e in received] == ["input-drift"]
        assert received[0]["state"] == "firing" and received[0]["model"] == "sentiment"


def test_monitor_dashboard_pages_in_chromium(sentiment: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    try:
        chromium = find_chromium()
    except BrowserNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    # Kept after the run as test artifacts (CI can upload the folder); KILN_TEST_ARTIFACTS moves it.
    shots = Path(os.environ.get("KILN_TEST_ARTIFACTS", "test-artifacts")) / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with webhook_receiver() as (hook, _received), serving(_config(sentiment["package"], tmp_path / "log", hook)) as srv:
        stream(srv, "sentiment", guardian_headlines()[:WINDOW])
        srv.app.state.monitor.evaluate()
        expected = {
            "models": ["Served models", "sentiment", "v1 (fp32)"],
            "lineage": ["Lineage", "sentiment@1"],
            "training": ["Training curves"],
            "compression": ["accuracy vs latency", "sentiment@1"],
            "traffic": ["Live traffic", "Batch sizes"],
            "drift": ["Drift: sentiment v1", "length", "drifted"],
            "alerts": ["Alert history", "input-drift", "firing"],
        }
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for name, texts in expected.items():
                page.goto(f"{srv.url}/ui/#{name}")
                page.wait_for_selector(f"main[data-ready='{name}']", timeout=15_000)
                body = page.inner_text("main")
                for text in texts:
                    assert text in body, f"page {name}: {text!r} missing in {body[:400]!r}"
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                if name == "training":
                    assert page.locator("svg path[data-series='train loss']").count() == 1
            page.goto(f"{srv.url}/ui/#traffic")
            page.wait_for_selector("main[data-ready='traffic']")
            assert page.inner_text("#kpi-requests") == str(WINDOW // 25)
            browser.close()
        assert errors == []
    assert len(list(shots.glob("*.png"))) == len(expected)
