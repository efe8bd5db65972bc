"""Alert webhooks over real HTTP: retries with backoff, a failure counter, and URLs kept out of logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from kiln.errors import ConfigError
from kiln.monitor.config import MonitorConfig
from kiln.monitor.service import Monitor
from kiln.serve.config import parse_serve_config
from tests.helpers import free_port
from tests.integration.monitor.webhook import webhook_receiver

SECRET = "T0KEN-s3cr3t"
FAILURES = 'kiln_webhook_failures_total{rule="low-accuracy"}'


def _monitor(tmp_path: Path, url: str, sleeps: list[float], **settings: Any) -> tuple[Monitor, CollectorRegistry]:
    config = MonitorConfig(
        enabled=True,
        log_dir=tmp_path,
        webhook_url=url,
        webhook_timeout_s=10,
        rules=[{"name": "low-accuracy", "when": "accuracy < 0.5"}],
        **settings,
    )
    registry = CollectorRegistry()
    return Monitor(config, repository=None, registry=registry, sleep=sleeps.append), registry


def _fire(monitor: Monitor) -> None:
    events = monitor.alerts.evaluate("s", 1, {"accuracy": 0.1})
    assert [e.state for e in events] == ["firing"]


def _failures(registry: CollectorRegistry) -> str:
    lines = generate_latest(registry).decode().splitlines()
    return next((line.split()[-1] for line in lines if line.startswith(FAILURES)), "absent")


def test_webhook_retries_with_doubling_backoff_until_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kiln")
    sleeps: list[float] = []
    with webhook_receiver(failures=[503, 500]) as (hook, received):
        monitor, registry = _monitor(tmp_path, f"{hook}/{SECRET}?key={SECRET}", sleeps, webhook_backoff_s=0.25)
        _fire(monitor)
    assert [e["rule"] for e in received] == ["low-accuracy"] * 3, "two failures, then delivered"
    assert sleeps == [0.25, 0.5]
    assert _failures(registry) in ("absent", "0.0")
    assert "HTTP 503" in caplog.text and SECRET not in caplog.text


def test_webhook_counts_a_failure_when_every_attempt_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kiln")
    sleeps: list[float] = []
    with webhook_receiver(failures=[500] * 10) as (hook, received):
        url = f"{hook}/{SECRET}?key={SECRET}"
        monitor, registry = _monitor(tmp_path, url, sleeps, webhook_attempts=3, webhook_backoff_s=1.0)
        _fire(monitor)
    assert len(received) == 3 and sleeps == [1.0, 2.0]
    assert _failures(registry) == "1.0"
    assert "failed after 3 attempt(s): HTTP 500" in caplog.text
    assert url not in caplog.text and SECRET not in caplog.text and "/hook" not in caplog.text


def test_webhook_does_not_retry_a_refusal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    with webhook_receiver(failures=[404]) as (hook, received):
        monitor, registry = _monitor(tmp_path, f"{hook}/{SECRET}", sleeps)
        _fire(monitor)
    assert len(received) == 1 and sleeps == []
    assert _failures(registry) == "1.0"


def test_webhook_to_a_closed_port_logs_no_url(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kiln")
    port = free_port()  # nothing listens on it
    sleeps: list[float] = []
    monitor, registry = _monitor(tmp_path, f"http://127.0.0.1:{port}/{SECRET}?key={SECRET}", sleeps, webhook_attempts=2)
    _fire(monitor)
    assert len(sleeps) == 1 and _failures(registry) == "1.0"
    assert f"http://127.0.0.1:{port}" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize("url", [f"ftp://example.com/{SECRET}", f"{SECRET}", f"http:///{SECRET}"])
def test_webhook_url_is_validated_without_being_echoed(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_serve_config({"monitor": {"webhook_url": url}})
    assert "webhook_url must be an http:// or https:// URL" in str(raised.value)
    assert SECRET not in str(raised.value)
    with pytest.raises(ValidationError):
        MonitorConfig(rules=[{"name": "r", "when": "accuracy < 1", "webhook_url": url}])
