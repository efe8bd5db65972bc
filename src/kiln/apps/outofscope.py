"""Calibrating the out-of-scope hand-off without (or with few) real out-of-scope messages.

The open-intent protocol (Shu et al. 2017; Zhang et al. 2021): a share of the training intents is
held out as pseudo-unknown, the score's statistics are fitted on the rest (and the softmax scores
read only their logits), and the validation messages of the held-out intents play the
out-of-scope messages. That step picks the operating point (the share of in-scope messages handed
off); the score is then refitted on all intents and its threshold set at the same share of the
in-scope validation messages. Real out-of-scope examples, when given, join the pseudo-unknown ones,
and the F1 objective is then fitted on them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.config.schema import OutOfScopeConfig
from kiln.runtime.outofscope import OutOfScopeScorer, fit_scorer


@dataclass(frozen=True)
class Scored:
    """A split run through the classifier: logits, pooled embeddings (or None) and labels."""

    logits: np.ndarray
    embeddings: np.ndarray | None
    labels: np.ndarray  # int class index; -1 for an out-of-scope example

    def take(self, rows: np.ndarray) -> Scored:
        """The rows selected by a boolean mask or index array."""
        return Scored(
            self.logits[rows], None if self.embeddings is None else self.embeddings[rows], self.labels[rows]
        )


@dataclass(frozen=True)
class Calibration:
    """The fitted score and threshold (hand off above it), with what calibration measured."""

    scorer: OutOfScopeScorer
    threshold: float
    report: dict[str, Any]


def threshold_for_handoff(inscope_scores: np.ndarray, max_handoff: float) -> float:
    """The lowest threshold at which at most ``max_handoff`` of ``inscope_scores`` lie above it."""
    ordered = np.sort(np.asarray(inscope_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_handoff * len(ordered)))
    return float(ordered[min(allowed, len(ordered) - 1)])


def best_f1_threshold(inscope_scores: np.ndarray, oos_scores: np.ndarray) -> float:
    """The threshold with the best F1 of out-of-scope detection (handing off above it)."""
    candidates = np.unique(np.concatenate([inscope_scores, oos_scores]))
    best, best_f1 = float(candidates.max()), -1.0
    for t in candidates:
        caught = float((oos_scores > t).sum())
        false = float((inscope_scores > t).sum())
        f1 = 2 * caught / (2 * caught + false + (len(oos_scores) - caught)) if caught else 0.0
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def handoff_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` above ``threshold`` (0 for none)."""
    return float((np.asarray(scores) > threshold).mean()) if len(scores) else 0.0


def calibrate(
    cfg: OutOfScopeConfig,
    *,
    train: Scored,
    validation: Scored,
    examples: Scored | None,
    seed: int,
) -> Calibration:
    """Fit the out-of-scope score on ``train`` and its threshold on ``validation`` (see module doc).

    Args:
        cfg: the recipe's ``support.out_of_scope`` section.
        train: the training split (statistics of the distance scores).
        validation: the validation split (in-scope messages, and the pseudo-unknown intents').
        examples: real out-of-scope messages (labels -1), or None.
        seed: chooses the held-out intents.
    """
    n_classes = train.logits.shape[1]
    rng = np.random.default_rng(seed)
    n_held = min(max(1, round(cfg.holdout_fraction * n_classes)), n_classes - 1)
    held = np.sort(rng.choice(n_classes, size=n_held, replace=False))
    known = np.setdiff1d(np.arange(n_classes), held)

    pseudo = _fit(cfg, train.take(np.isin(train.labels, known)))
    val_known = validation.take(np.isin(validation.labels, known))
    val_held = validation.take(np.isin(validation.labels, held))
    inscope = pseudo.score(val_known.logits[:, known], val_known.embeddings)
    unknown = pseudo.score(val_held.logits[:, known], val_held.embeddings)
    if examples is not None:
        unknown = np.concatenate([unknown, pseudo.score(examples.logits[:, known], examples.embeddings)])

    full = _fit(cfg, train)
    full_inscope = full.score(validation.logits, validation.embeddings)
    full_examples = full.score(examples.logits, examples.embeddings) if examples is not None else None
    if cfg.objective == "f1" and full_examples is not None:
        threshold = best_f1_threshold(full_inscope, full_examples)
        rate = handoff_rate(full_inscope, threshold)
        pseudo_threshold = threshold_for_handoff(inscope, rate)
    else:
        if cfg.objective == "f1":
            pseudo_threshold = best_f1_threshold(inscope, unknown)
            rate = max(handoff_rate(inscope, pseudo_threshold), 1.0 / max(len(full_inscope), 1))
        else:
            rate = cfg.max_inscope_handoff
            pseudo_threshold = threshold_for_handoff(inscope, rate)
        threshold = threshold_for_handoff(full_inscope, rate)
    report: dict[str, Any] = {
        "method": cfg.method,
        "objective": cfg.objective,
        "threshold": threshold,
        "held_out_intents": int(n_held),
        "pseudo": {
            "inscope_handoff": handoff_rate(inscope, pseudo_threshold),
            "oos_recall": handoff_rate(unknown, pseudo_threshold),
            "oos_n": len(unknown),
        },
        "validation_inscope_handoff": handoff_rate(full_inscope, threshold),
    }
    if full_examples is not None:
        report["examples"] = {"n": len(full_examples), "oos_recall": handoff_rate(full_examples, threshold)}
    return Calibration(full, threshold, report)


def _fit(cfg: OutOfScopeConfig, split: Scored) -> OutOfScopeScorer:
    return fit_scorer(cfg.method, split.embeddings, split.labels, k=cfg.k)
