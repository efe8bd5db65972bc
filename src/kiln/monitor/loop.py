"""The closed loop: an alert with a ``retrain:`` action retrains, gates and canaries a new version.

When such a rule fires, a background thread (never the request path, never the event loop):

1. takes the logged inputs of the alerting model that have feedback labels, holds a seeded 20%
   of them out for the gate (``holdout.csv``) and writes the rest to
   ``<monitor>/retrain/<model>-<time>/data.csv`` (columns ``text``, ``label``); the rule's recipe
   is retrained on that file alone: ``data.train_file`` points at it, ``data.dataset``,
   ``data.test_file`` and ``data.max_examples`` are cleared (recipe data is replaced, not mixed);
2. runs ``kiln train`` in a child process (so training never holds the server's GIL);
3. measures the new package and the serving version on the same held-out rows (accuracy,
   macro-F1, ECE, batch-1 latency, size) and passes them through the gate: the recipe's own
   ``promote:`` rules when it has them (every alias a rule names stands for the serving version;
   rules naming ``baseline`` are skipped), else ``accuracy >= serving accuracy - max_accuracy_drop``;
4. registers the package in the registry, loads it into the running server and gives it
   ``canary_percent`` of the traffic.

Every outcome (started, canary, rejected, failed) is one row of the alert history under the
rule name ``<rule>:retrain`` with the reason, and one log line.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.monitor.alerts import FIRING, AlertEvent
from kiln.monitor.config import AlertRuleConfig, RetrainConfig

logger = logging.getLogger(__name__)

STARTED = "retraining"
CANARY = "canary"
REJECTED = "rejected"
FAILED = "retrain-failed"
MIN_TRAIN_ROWS = 20  # fewer labelled rows cannot be split into train/validation/test
HOLDOUT_SHARE = 0.2  # labelled logged rows kept out of retraining to gate the candidate on
MIN_HOLDOUT_ROWS = 5


@dataclass(frozen=True)
class GateRules:
    """The built-in promotion rule: candidate accuracy >= current accuracy - max drop."""

    max_accuracy_drop: float = 0.02  # negative: the candidate must beat the current version
    metric: str = "accuracy"  # validation metric compared


@dataclass(frozen=True)
class RetrainOutcome:
    """What one retraining did."""

    model: str
    from_version: int  # the version whose alert triggered it
    state: str  # canary, rejected or retrain-failed
    reason: str
    run_dir: Path | None = None
    new_version: int | None = None
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    current_metrics: dict[str, Any] = field(default_factory=dict)


def passes_gate(
    candidate_metrics: Mapping[str, Any], current_metrics: Mapping[str, Any], rules: GateRules
) -> tuple[bool, str]:
    """The built-in gate: candidate metric >= serving metric - max drop.

    Metrics are flat (measured on the same held-out rows) or a manifest's ``metrics``
    (``{"validation": {"accuracy": ...}}``).
    """
    candidate = _validation(candidate_metrics).get(rules.metric)
    current = _validation(current_metrics).get(rules.metric)
    if candidate is None:
        return False, f"candidate has no {rules.metric}"
    if current is None:
        return True, f"candidate {rules.metric} {candidate:.4f}; serving version has none to compare"
    floor = float(current) - rules.max_accuracy_drop
    verdict = "passes" if float(candidate) >= floor else "fails"
    text = (
        f"candidate {rules.metric} {float(candidate):.4f} {verdict} the gate "
        f">= {floor:.4f} (serving {float(current):.4f} - max drop {rules.max_accuracy_drop})"
    )
    return float(candidate) >= floor, text


def gate(
    candidate: Mapping[str, float],
    current: Mapping[str, float],
    promote: Any,
    rules: GateRules,
    serving_ref: str,
) -> tuple[bool, str]:
    """Decide whether a retrained candidate may start as a canary, and say why.

    ``candidate`` and ``current`` are flat metrics measured on the same held-out rows, latency
    timed in the same process. With a recipe ``promote`` section that has rules, those rules
    decide (through ``kiln.registry.gate.decide``), every alias they name standing for the
    serving version ``serving_ref``; rules naming ``baseline`` are skipped (retraining makes no
    baseline package). Otherwise the built-in ``rules``.
    """
    if promote is None or not promote.rules:
        return passes_gate(candidate, current, rules)
    from kiln.registry.gate import Candidate, Holder, decide, rule_aliases

    rows = "the held-out logged rows"  # both measured on them: one fingerprint
    holder = Holder(ref=serving_ref, metrics=dict(current), data_fingerprint=rows, is_timed_in_run=True)
    decision = decide(
        promote,
        [Candidate(step="retrain", ref="candidate", metrics=dict(candidate), data_fingerprint=rows)],
        {alias: holder for alias in rule_aliases(promote)},
    )
    checks = "; ".join(f"'{c.rule}' {c.status}: {c.detail}" for c in decision.considered[0].checks)
    is_passed = decision.chosen is not None
    return is_passed, f"recipe gate {'passed' if is_passed else 'failed'} ({checks})"


def write_feedback_rows(log_dir: Path, model: str, dest: Path) -> int:
    """Write the model's logged text inputs that have feedback labels to a CSV; return the rows."""
    return _write_csv(dest, feedback_rows(log_dir, model))


def split_holdout(rows: list[tuple[str, str]], seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train rows, held-out rows): a seeded ``HOLDOUT_SHARE`` (at least ``MIN_HOLDOUT_ROWS``) held out."""
    import random

    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    n_holdout = max(MIN_HOLDOUT_ROWS, round(HOLDOUT_SHARE * len(shuffled)))
    return shuffled[n_holdout:], shuffled[:n_holdout]


def feedback_rows(log_dir: Path, model: str) -> list[tuple[str, str]]:
    """The model's logged text inputs that have feedback labels, as (text, label), in log order.

    Raises:
        ValueError: the model's inputs are not texts (image retraining from logs is not supported).
    """
    import json

    from kiln.monitor.predlog import FEEDBACK, read_log

    predictions = read_log(log_dir)
    feedback = read_log(log_dir, FEEDBACK)
    if predictions.empty or feedback.empty:
        return []
    feedback = feedback[feedback["model"] == model].drop_duplicates(["request_id", "index"], keep="last")
    labels = {(str(r.request_id), int(r.index)): str(r.label) for r in feedback.itertuples(index=False)}
    rows = []
    for r in predictions[predictions["model"] == model].itertuples(index=False):
        label = labels.get((str(r.request_id), int(r.index)))
        if label is None:
            continue
        text = json.loads(r.input)
        if not isinstance(text, str):
            raise ValueError("retraining from logged inputs supports text models only")
        rows.append((text, label))
    return rows


class RetrainLoop:
    """The alert action that retrains in the background; one run per model at a time."""

    def __init__(self, monitor: Any, *, python: str = sys.executable) -> None:
        self.monitor = monitor
        self.python = python
        self.outcomes: list[RetrainOutcome] = []  # newest last
        self._busy: set[str] = set()
        self._last_start: dict[tuple[str, str], float] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, event: AlertEvent, rule: AlertRuleConfig) -> None:
        """Start a retraining for a firing rule with ``retrain:`` (unless busy or cooling down)."""
        cfg = rule.retrain
        if cfg is None or event.state != FIRING:
            return
        now = time.monotonic()
        with self._lock:
            last = self._last_start.get((rule.name, event.model))
            if event.model in self._busy or (last is not None and now - last < cfg.cooldown_s):
                logger.info("retrain of %s for %s skipped: running or cooling down", event.model, rule.name)
                return
            self._busy.add(event.model)
            self._last_start[(rule.name, event.model)] = now
        thread = threading.Thread(
            target=self._run_guarded, args=(event, rule), name=f"kiln-retrain-{event.model}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the retrainings started so far (tests, shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout_s)

    def run_once(self, event: AlertEvent, rule: AlertRuleConfig) -> RetrainOutcome:
        """Retrain, gate, register and canary for one firing alert (blocking; runs on a thread)."""
        cfg = rule.retrain
        assert cfg is not None
        run_dir = self.monitor.folder / "retrain" / f"{event.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.monitor.log.flush()
        rows = feedback_rows(self.monitor.folder, event.model)
        needed = max(cfg.min_feedback, MIN_TRAIN_ROWS + MIN_HOLDOUT_ROWS)
        if len(rows) < needed:
            reason = f"{len(rows)} logged inputs with feedback, need {needed}"
            return self._outcome(event, rule, FAILED, reason, run_dir)
        train_rows, holdout_rows = split_holdout(rows)
        _write_csv(run_dir / "data.csv", train_rows)
        _write_csv(run_dir / "holdout.csv", holdout_rows)
        self._record(
            event,
            rule,
            STARTED,
            f"retraining on {len(train_rows)} logged inputs with feedback ({len(holdout_rows)} held out "
            f"for the gate) in {run_dir}",
        )
        package = self._train(cfg, run_dir)
        current = self.monitor.repository.route(event.model, event.version).model.predictor.path
        recipe = _recipe_of(package)
        holdout = run_dir / "holdout.csv"
        texts = [text for text, _ in holdout_rows]
        candidate_metrics = _gate_metrics(package, holdout, texts, recipe, run_dir / "gate" / "candidate")
        current_metrics = _gate_metrics(current, holdout, texts, recipe, run_dir / "gate" / "serving")
        is_passed, reason = gate(
            candidate_metrics,
            current_metrics,
            recipe.promote,
            GateRules(max_accuracy_drop=cfg.max_accuracy_drop),
            f"{event.model}@{event.version}",
        )
        if not is_passed:
            return self._outcome(
                event, rule, REJECTED, reason, run_dir, candidate=candidate_metrics, current=current_metrics
            )
        version = self._start_canary(event.model, event.version, package, cfg.canary_percent)
        return self._outcome(
            event,
            rule,
            CANARY,
            f"{reason}; version {version} serves {cfg.canary_percent}% as a canary",
            run_dir,
            new_version=version,
            candidate=candidate_metrics,
            current=current_metrics,
        )

    def _run_guarded(self, event: AlertEvent, rule: AlertRuleConfig) -> None:
        try:
            self.run_once(event, rule)
        except Exception as exc:
            logger.exception("retraining %s for %s failed", event.model, rule.name)
            self._outcome(event, rule, FAILED, f"{type(exc).__name__}: {exc}", None)
        finally:
            with self._lock:
                self._busy.discard(event.model)

    def _train(self, cfg: RetrainConfig, run_dir: Path) -> Path:
        overrides = [
            *cfg.overrides,
            "data.dataset=null",
            "data.test_file=null",
            "data.max_examples=null",
            f"data.train_file={run_dir / 'data.csv'}",
            "data.format=csv",
            "data.text_column=text",
            "data.label_column=label",
            f"train.output_dir={run_dir / 'run'}",
            "train.progress=false",
        ]
        command = [self.python, "-m", "kiln.cli.main", "train", str(cfg.recipe), *overrides]
        with open(run_dir / "train.log", "w", encoding="utf-8") as out:
            code = subprocess.run(  # noqa: S603 (our own CLI, arguments from the serve config)
                command, stdout=out, stderr=subprocess.STDOUT, timeout=cfg.timeout_s, env=dict(os.environ)
            ).returncode
        package = run_dir / "run" / "package"
        if code != 0 or not (package / "kiln.json").is_file():
            tail = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")[-500:]
            raise RuntimeError(f"kiln train exited with {code}: {tail.strip()}")
        return package

    def _start_canary(self, model: str, current: int, package: Path, percent: int) -> int:
        from kiln.registry import Registry

        with Registry() as registry:
            registered = registry.register(package, name=model, tags={"source": "monitor-retrain"})
        loaded = set(self.monitor.repository.entry(model).versions)
        version = registered.version if registered.version not in loaded else max(loaded) + 1
        source = f"{model}@{registered.version}"
        self._on_server_loop(_load_canary(self.monitor.repository, model, version, source, current, percent))
        return version

    def _on_server_loop(self, coro: Any) -> Any:
        loop = self.monitor.event_loop
        if loop is None or loop.is_closed():
            return asyncio.run(coro)
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _outcome(
        self,
        event: AlertEvent,
        rule: AlertRuleConfig,
        state: str,
        reason: str,
        run_dir: Path | None,
        *,
        new_version: int | None = None,
        candidate: dict[str, Any] | None = None,
        current: dict[str, Any] | None = None,
    ) -> RetrainOutcome:
        outcome = RetrainOutcome(
            model=event.model,
            from_version=event.version,
            state=state,
            reason=reason,
            run_dir=run_dir,
            new_version=new_version,
            candidate_metrics=candidate or {},
            current_metrics=current or {},
        )
        self.outcomes.append(outcome)
        self._record(event, rule, state, reason)
        return outcome

    def _record(self, event: AlertEvent, rule: AlertRuleConfig, state: str, reason: str) -> None:
        logger.warning("retrain %s of %s@%s (%s): %s", state, event.model, event.version, rule.name, reason)
        self.monitor.history.add(
            AlertEvent(f"{rule.name}:retrain", event.model, event.version, state, None, reason, time.time())
        )


def attach_retraining(monitor: Any) -> RetrainLoop | None:
    """Add the retrain loop to a monitor's alert actions when a rule has ``retrain:``."""
    if not any(rule.retrain is not None for rule in monitor.config.rules):
        return None
    loop = RetrainLoop(monitor)
    monitor.actions.append(loop)
    return loop


async def _load_canary(repository: Any, model: str, version: int, source: str, current: int, percent: int) -> None:
    await repository.load_version(model, version, source)
    sticky = repository.entry(model).router.sticky_header
    repository.set_routing(model, {current: 100 - percent, version: percent}, sticky)


def _validation(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = metrics.get("validation")
    return inner if isinstance(inner, Mapping) else metrics


def _recipe_of(package: Path) -> Any:
    from kiln.config import parse_recipe
    from kiln.runtime.package import read_manifest

    return parse_recipe(read_manifest(package)["recipe"], source=f"{package}/kiln.json recipe")


def _gate_metrics(package: Path, holdout: Path, texts: list[str], recipe: Any, out: Path) -> dict[str, float]:
    """Metrics of one package on the held-out logged rows, as the recipe's gate names them."""
    import kiln.evaluate

    cfg = kiln.evaluate.EvaluationConfig(
        package=Path(package),
        data_file=holdout,
        output_dir=out,
        batch_size=recipe.eval.batch_size,
        ece_bins=recipe.eval.ece_bins,
    )
    return kiln.evaluate.gate_metrics(
        cfg, texts, num_threads=recipe.eval.num_threads, latency_runs=recipe.eval.latency_runs
    )


def _write_csv(dest: Path, rows: list[tuple[str, str]]) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return len(rows)
