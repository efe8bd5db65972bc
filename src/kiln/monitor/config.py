"""Typed settings of monitoring: the prediction log, drift windows, alert rules, retraining.

A serve YAML holds them under ``monitor:``; unknown keys are refused like everywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from kiln.config.section import Section


class RetrainConfig(Section):
    # Recipe retrained; its data is replaced by the logged inputs that have feedback labels.
    recipe: Path
    # Share of traffic (percent) the retrained version gets as a canary once it passes the gate.
    canary_percent: int = Field(default=10, ge=1, le=100)
    # Fewest feedback labels needed before a retrain starts.
    min_feedback: int = Field(default=0, ge=0)
    # Seconds after a retrain before the rule may trigger another.
    cooldown_s: float = Field(default=3600.0, ge=0)
    # Recipe overrides (key.sub=value) applied to the retraining run, e.g. train.epochs=1.
    overrides: list[str] = Field(default_factory=list)
    # Gate: largest drop of validation accuracy from the serving version (negative: must improve).
    max_accuracy_drop: float = Field(default=0.02, ge=-1.0, le=1.0)
    # Seconds the retraining process may run before it is stopped and counted as failed.
    timeout_s: float = Field(default=3600.0, gt=0)


class AlertRuleConfig(Section):
    unquoted_fields: ClassVar[frozenset[str]] = frozenset({"webhook_url"})

    # Name of the alert, shown in history, webhooks and the kiln_alert_active series.
    name: str = Field(min_length=1)
    # Condition, e.g. "psi(prediction) > 0.2 for 5m", "p99_latency > 50ms", "accuracy < 0.8".
    when: str = Field(min_length=1)
    # Only this model; every served model when empty.
    model: str | None = None
    # A webhook for this rule only, in addition to the global one (never logged).
    webhook_url: str | None = None
    # Retrain and canary a new version when the alert fires (the closed loop); off when empty.
    retrain: RetrainConfig | None = None

    @field_validator("when")
    @classmethod
    def _parse(cls, value: str) -> str:
        from kiln.monitor.rules import parse_condition

        parse_condition(value)  # raises ValueError with the position of the problem
        return value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        return check_webhook_url(value)


class MonitorConfig(Section):
    unquoted_fields: ClassVar[frozenset[str]] = frozenset({"webhook_url"})

    # Log predictions, watch drift and evaluate alerts in the server.
    enabled: bool = False
    # Folder of the prediction log, feedback and alert history; KILN_HOME/monitor when empty.
    log_dir: Path | None = None
    # Share of requests logged (1.0 logs all, fine at low traffic).
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Seconds between writes of buffered records to a new Parquet file.
    flush_interval_s: float = Field(default=2.0, gt=0)
    # Most records buffered in memory; beyond it new records are dropped (and counted).
    max_buffer_rows: int = Field(default=100_000, ge=1)
    # Size limit of the log folder's Parquet files; the oldest are deleted beyond it.
    max_log_bytes: int = Field(default=1 << 30, ge=1)
    # Seconds a log file is kept.
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Most recent inputs per model version compared with the reference.
    window_rows: int = Field(default=500, ge=10)
    # Fewest inputs in a window before drift is computed.
    min_window_rows: int = Field(default=50, ge=5)
    # Seconds between drift and alert evaluations (each pass takes CPU from serving: see
    # bench/RESULTS.md for the cost of these defaults at full load).
    eval_interval_s: float = Field(default=30.0, gt=0)
    # Most window inputs re-encoded per evaluation for the embedding projection (0 turns it off).
    embed_rows: int = Field(default=100, ge=0)
    # Most feedback labels kept (in memory and in the log); beyond it the oldest are dropped.
    max_feedback_rows: int = Field(default=100_000, ge=1)
    # Seconds a feedback label is kept.
    feedback_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # URL every alert change is POSTed to as JSON (never logged); none when empty.
    webhook_url: str | None = None
    # Seconds one webhook attempt waits for an answer.
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    # Attempts of one webhook call, the first included; then it counts as failed.
    webhook_attempts: int = Field(default=4, ge=1, le=10)
    # Seconds before the first webhook retry, doubled for each next one.
    webhook_backoff_s: float = Field(default=0.5, ge=0)
    # Alert rules.
    rules: list[AlertRuleConfig] = Field(default_factory=list)

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        return check_webhook_url(value)


def check_webhook_url(value: str | None) -> str | None:
    """An http(s) URL with a host, or None; the error never quotes the URL (it may hold a secret).

    Raises:
        ValueError: any other value.
    """
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value)
        is_valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        is_valid = False
    if not is_valid:
        raise ValueError("webhook_url must be an http:// or https:// URL with a host (not shown here)")
    return value


def monitor_dir(config: MonitorConfig) -> Path:
    """The monitoring folder: ``log_dir`` or ``KILN_HOME/monitor``."""
    from kiln.config.home import kiln_home

    if config.log_dir is not None:
        return Path(config.log_dir)
    return kiln_home() / "monitor"
