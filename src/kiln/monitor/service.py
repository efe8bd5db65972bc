"""Monitoring inside the server: the prediction-log observer, a background evaluation thread,
drift and alert series for Prometheus, and the feedback and report endpoints.

Nothing here runs on the request path except ``PredictionLog.observe`` (a sample and a deque
append). Writing Parquet, re-encoding window inputs, tests and alert delivery all happen on one
background thread started and stopped with the server's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from kiln.monitor.alerts import FIRING, AlertEngine, AlertEvent, AlertHistory, WebhookPolicy
from kiln.monitor.config import AlertRuleConfig, MonitorConfig, monitor_dir
from kiln.monitor.predlog import PredictionLog
from kiln.monitor.window import WindowReport, evaluate_generation_window, evaluate_window
from kiln.runtime.profile import read_profile

logger = logging.getLogger(__name__)


class Monitor:
    """The monitoring state of one server process."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        repository: Any,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.repository = repository
        self.folder = monitor_dir(config)
        registry = registry or CollectorRegistry()
        self.feedback_dropped = Counter(
            "kiln_feedback_dropped",
            "Feedback labels dropped from the store, by reason (size: over max_feedback_rows; "
            "age: older than feedback_retention_s).",
            ["reason"],
            registry=registry,
        )
        self.webhook_failures = Counter(
            "kiln_webhook_failures",
            "Alert webhook calls that failed after every attempt, by rule.",
            ["rule"],
            registry=registry,
        )
        self.log = PredictionLog(
            self.folder,
            sample_rate=config.sample_rate,
            max_buffer_rows=config.max_buffer_rows,
            window_rows=config.window_rows,
            max_log_bytes=config.max_log_bytes,
            retention_s=config.retention_s,
            max_feedback_rows=config.max_feedback_rows,
            feedback_retention_s=config.feedback_retention_s,
            on_feedback_drop=lambda reason, n: self.feedback_dropped.labels(reason).inc(n),
            clock=clock,
        )
        self.history = AlertHistory(self.folder / "alerts.sqlite")
        self.alerts = AlertEngine(
            list(config.rules),
            history=self.history,
            webhook_url=config.webhook_url,
            webhook=WebhookPolicy(
                timeout_s=config.webhook_timeout_s,
                attempts=config.webhook_attempts,
                backoff_s=config.webhook_backoff_s,
                sleep=sleep,
            ),
            on_event=self._on_alert,
            on_webhook_failure=lambda rule: self.webhook_failures.labels(rule).inc(),
        )
        self.reports: dict[tuple[str, int], WindowReport] = {}
        self.actions: list[Callable[[AlertEvent, AlertRuleConfig], None]] = []  # e.g. the retrain loop
        self.event_loop: asyncio.AbstractEventLoop | None = None  # the server's, for canary changes
        self._profiles: dict[Path, dict[str, Any] | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.drift_score = Gauge(
            "kiln_drift_score",
            "Drift of a statistic against the training reference (p-value for tests, distance otherwise).",
            ["model", "version", "feature", "method"],
            registry=registry,
        )
        self.alert_active = Gauge(
            "kiln_alert_active", "1 while an alert fires.", ["rule", "model", "version"], registry=registry
        )

    def start(self) -> None:
        """Start the background thread (flush, evaluate, alert)."""
        try:
            self.event_loop = asyncio.get_running_loop()
        except RuntimeError:
            self.event_loop = None
        self.log.restore_feedback()
        self.log.restore_generations()
        self.repository.observers.append(self.log.observe)
        self._thread = threading.Thread(target=self._run, name="kiln-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is still buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.log.observe in self.repository.observers:
            self.repository.observers.remove(self.log.observe)
        self.log.flush()

    def evaluate(self, now: float | None = None) -> list[WindowReport]:
        """Flush, then compare every model version's window with its reference and run the rules."""
        self.log.flush()
        reports = []
        for model, version in self.log.windows():
            rows = self.log.window(model, version)
            if len(rows) < self.config.min_window_rows:
                continue
            predictor = self._predictor(model, version)
            profile = self._profile(predictor.path) if predictor is not None else None
            report = evaluate_window(
                rows,
                model=model,
                version=version,
                profile=profile,
                predictor=predictor,
                true_label=self.log.true_label,
                embed_rows=self.config.embed_rows,
            )
            reports.append(self._publish(report, now))
        for model, version in self.log.generations.keys():
            reference, current = self.log.generations.windows(model, version)
            if len(current or reference) < self.config.min_window_rows:
                continue
            report = evaluate_generation_window(
                reference,
                current,
                model=model,
                version=version,
                reference_rows=self.config.window_rows,
                min_rows=self.config.min_window_rows,
            )
            reports.append(self._publish(report, now))
        if reports:
            from kiln.runtime.package import write_json_atomic

            write_json_atomic(self.folder / "reports.json", [r.to_json() for r in self.reports.values()])
        return reports

    def _publish(self, report: WindowReport, now: float | None) -> WindowReport:
        """Keep a version's report, set its drift series and run the alert rules on it."""
        model, version = report.model, report.version
        self.reports[(model, version)] = report
        for col in report.columns:
            self.drift_score.labels(model, str(version), col.column, col.method).set(col.score)
        self.alerts.evaluate(model, version, report.values, now=now)
        return report

    def feedback(self, model: str, request_id: str, label: str, index: int) -> None:
        """Record a true label for a logged input."""
        self.log.add_feedback(model, request_id, label, index)

    def _run(self) -> None:
        last_eval = time.monotonic()
        while not self._stop.wait(self.config.flush_interval_s):
            try:
                if time.monotonic() - last_eval >= self.config.eval_interval_s:
                    last_eval = time.monotonic()
                    self.evaluate()
                else:
                    self.log.flush()
            except Exception:
                logger.exception("monitoring pass failed; trying again at the next interval")

    def _on_alert(self, event: AlertEvent, rule: AlertRuleConfig) -> None:
        self.alert_active.labels(event.rule, event.model, str(event.version)).set(1 if event.state == FIRING else 0)
        for action in self.actions:
            action(event, rule)

    def _predictor(self, model: str, version: int) -> Any:
        try:
            return self.repository.route(model, version).model.predictor
        except Exception:  # the version was unloaded since it was logged
            return None

    def _profile(self, path: Path) -> dict[str, Any] | None:
        if path not in self._profiles:
            self._profiles[path] = read_profile(path)
        return self._profiles[path]


def attach_monitoring(app: Any, config: MonitorConfig) -> Monitor | None:
    """Add the monitoring endpoints and the dashboard to a serve app; start a monitor when enabled."""
    import contextlib
    from collections.abc import AsyncIterator

    from kiln.monitor import http
    from kiln.monitor.ui import api as ui_api

    app.include_router(http.router)
    ui_api.mount(app)
    app.state.monitor = None
    if not config.enabled:
        return None
    service = app.state.service
    monitor = Monitor(config, repository=service.repository, registry=service.metrics.registry)
    app.state.monitor = monitor
    from kiln.monitor.loop import attach_retraining

    app.state.retrain = attach_retraining(monitor)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            monitor.start()
            try:
                yield state
            finally:
                await asyncio.to_thread(monitor.stop)

    app.router.lifespan_context = lifespan
    return monitor
