"""Alert rules evaluated over window values; changes go to the log, webhooks, Prometheus and SQLite.

An alert is pending while its condition holds for less than its ``for`` duration, firing once
it has held that long, and resolved when it stops holding. Each change is one history row.

A webhook URL often carries its secret in the path or query (Slack, Teams, PagerDuty), so it is
never logged: messages name only its scheme, host and port.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.monitor.config import AlertRuleConfig
from kiln.monitor.rules import Condition, parse_condition

logger = logging.getLogger(__name__)

FIRING = "firing"
RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertEvent:
    """One change of an alert's state."""

    rule: str
    model: str
    version: int
    state: str  # "firing" or "resolved"
    value: float | None  # the value the condition read
    condition: str  # the rule's text
    at: float  # time.time()

    def to_json(self) -> dict[str, Any]:
        """The webhook and API payload."""
        return {
            "rule": self.rule,
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "value": self.value,
            "condition": self.condition,
            "at": self.at,
        }


class AlertHistory:
    """Alert events in a SQLite file (one short transaction per write)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY, rule TEXT, model TEXT, "
                "version INTEGER, state TEXT, value REAL, condition TEXT, at REAL)"
            )

    def add(self, event: AlertEvent) -> None:
        """Store one event."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO alerts (rule, model, version, state, value, condition, at) VALUES (?,?,?,?,?,?,?)",
                (event.rule, event.model, event.version, event.state, event.value, event.condition, event.at),
            )

    def list(self, limit: int = 200) -> list[AlertEvent]:
        """The most recent events, newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT rule, model, version, state, value, condition, at FROM alerts ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [AlertEvent(*row) for row in rows]

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)


@dataclass
class _State:
    since: float | None = None  # when the condition started holding
    is_firing: bool = False


@dataclass(frozen=True)
class WebhookPolicy:
    """How webhook calls are made: timeout, attempts and exponential backoff."""

    timeout_s: float = 5.0  # per attempt
    attempts: int = 4  # tries of one call, the first included
    backoff_s: float = 0.5  # wait before the first retry, doubled for each next one
    sleep: Callable[[float], None] = time.sleep  # injectable so that tests need not wait


class AlertEngine:
    """Evaluates rules against each window's values and delivers changes."""

    def __init__(
        self,
        rules: list[AlertRuleConfig],
        *,
        history: AlertHistory,
        webhook_url: str | None = None,
        webhook: WebhookPolicy | None = None,
        on_event: Callable[[AlertEvent, AlertRuleConfig], None] | None = None,
        on_webhook_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.rules: list[tuple[AlertRuleConfig, Condition]] = [(r, parse_condition(r.when)) for r in rules]
        self.history = history
        self.webhook_url = webhook_url
        self.webhook = webhook or WebhookPolicy()
        self.on_event = on_event
        self.on_webhook_failure = on_webhook_failure  # called with the rule's name
        self._states: dict[tuple[str, str, int], _State] = {}
        self._lock = threading.Lock()

    def active(self) -> list[tuple[str, str, int]]:
        """(rule, model, version) of every firing alert."""
        with self._lock:
            return sorted(k for k, s in self._states.items() if s.is_firing)

    def evaluate(
        self, model: str, version: int, values: Mapping[str, float], now: float | None = None
    ) -> list[AlertEvent]:
        """Update every rule for one model version; deliver and return the changes."""
        now = time.time() if now is None else now
        events = []
        for rule, cond in self.rules:
            if rule.model is not None and rule.model != model:
                continue
            holds = cond.holds(values)
            with self._lock:
                state = self._states.setdefault((rule.name, model, version), _State())
                if holds:
                    state.since = now if state.since is None else state.since
                    if not state.is_firing and now - state.since >= cond.for_s:
                        state.is_firing = True
                        events.append(
                            (rule, AlertEvent(rule.name, model, version, FIRING, values.get(cond.key), rule.when, now))
                        )
                elif holds is False:
                    state.since = None
                    if state.is_firing:
                        state.is_firing = False
                        events.append(
                            (
                                rule,
                                AlertEvent(rule.name, model, version, RESOLVED, values.get(cond.key), rule.when, now),
                            )
                        )
        for rule, event in events:
            self._deliver(event, rule)
        return [e for _, e in events]

    def _deliver(self, event: AlertEvent, rule: AlertRuleConfig) -> None:
        logger.warning(
            "alert %s %s for %s@%s: %s (value %s)",
            event.rule,
            event.state,
            event.model,
            event.version,
            event.condition,
            event.value,
        )
        self.history.add(event)
        if self.on_event is not None:  # before the webhooks, whose retries may take a while
            try:
                self.on_event(event, rule)
            except Exception:
                logger.exception("alert action of rule %s failed", rule.name)
        for url in {u for u in (self.webhook_url, rule.webhook_url) if u}:
            is_delivered = post_webhook(url, event.to_json(), policy=self.webhook)
            if not is_delivered and self.on_webhook_failure is not None:
                self.on_webhook_failure(rule.name)


def post_webhook(url: str, payload: dict[str, Any], *, policy: WebhookPolicy) -> bool:
    """POST a JSON payload, retrying with backoff; whether it was delivered.

    A network error, a timeout, 408, 429 and 5xx answers are retried; other 4xx answers are
    not (the same call would be refused again). Failures are logged without the URL, never
    raised: the next alert change tries again.
    """
    import urllib.request

    target = webhook_target(url)
    body = json.dumps(payload).encode()
    reason = ""
    for attempt in range(1, policy.attempts + 1):
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=policy.timeout_s) as response:  # noqa: S310 (configured URL)
                if 200 <= response.status < 300:
                    return True
                reason, is_retried = f"HTTP {response.status}", True
        except Exception as exc:  # noqa: BLE001 (any failure of the call is reported the same way)
            reason, is_retried = _failure(exc)
        if not is_retried or attempt == policy.attempts:
            break
        delay_s = policy.backoff_s * 2 ** (attempt - 1)
        logger.info(
            "webhook to %s failed (%s), attempt %d of %d; retrying in %.1f s",
            target, reason, attempt, policy.attempts, delay_s,
        )
        policy.sleep(delay_s)
    logger.warning("webhook to %s failed after %d attempt(s): %s", target, attempt, reason)
    return False


def webhook_target(url: str) -> str:
    """What a log may say about a webhook URL: its scheme, host and port, nothing else."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}"
    except ValueError:
        return "(an unparsable URL)"


def _failure(exc: Exception) -> tuple[str, bool]:
    """(reason, whether to retry) for an exception of ``urlopen``, without its URL."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}", exc.code in (408, 429) or exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, OSError):
            return inner.strerror or type(inner).__name__, True
        return type(exc).__name__, True
    if isinstance(exc, TimeoutError):
        return "timed out", True
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__, True
    import http.client

    # ValueError and http.client errors can quote the URL in their message: name the type only.
    return type(exc).__name__, isinstance(exc, http.client.HTTPException)


def active_from_history(history: list[AlertEvent]) -> list[dict[str, Any]]:
    """Alerts whose latest event (history newest first) is ``firing``."""
    latest: dict[tuple[str, str, int], str] = {}
    for event in history:
        latest.setdefault((event.rule, event.model, event.version), event.state)
    return [{"rule": r, "model": m, "version": v} for (r, m, v), s in sorted(latest.items()) if s == FIRING]
