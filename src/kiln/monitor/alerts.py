"""Alert rules evaluated over window values; changes go to the log, webhooks, Prometheus and SQLite.

An alert is pending while its condition holds for less than its ``for`` duration, firing once
it has held that long, and resolved when it stops holding. Each change is one history row.
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


class AlertEngine:
    """Evaluates rules against each window's values and delivers changes."""

    def __init__(
        self,
        rules: list[AlertRuleConfig],
        *,
        history: AlertHistory,
        webhook_url: str | None = None,
        webhook_timeout_s: float = 5.0,
        on_event: Callable[[AlertEvent, AlertRuleConfig], None] | None = None,
    ) -> None:
        self.rules: list[tuple[AlertRuleConfig, Condition]] = [(r, parse_condition(r.when)) for r in rules]
        self.history = history
        self.webhook_url = webhook_url
        self.webhook_timeout_s = webhook_timeout_s
        self.on_event = on_event
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
        for url in {u for u in (self.webhook_url, rule.webhook_url) if u}:
            post_webhook(url, event.to_json(), timeout_s=self.webhook_timeout_s)
        if self.on_event is not None:
            try:
                self.on_event(event, rule)
            except Exception:
                logger.exception("alert action of rule %s failed", rule.name)


def post_webhook(url: str, payload: dict[str, Any], *, timeout_s: float) -> bool:
    """POST a JSON payload; failures are logged, never raised (the next change tries again)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as exc:
        logger.warning("webhook %s failed: %s", url, exc)
        return False


def active_from_history(history: list[AlertEvent]) -> list[dict[str, Any]]:
    """Alerts whose latest event (history newest first) is ``firing``."""
    latest: dict[tuple[str, str, int], str] = {}
    for event in history:
        latest.setdefault((event.rule, event.model, event.version), event.state)
    return [{"rule": r, "model": m, "version": v} for (r, m, v), s in sorted(latest.items()) if s == FIRING]
