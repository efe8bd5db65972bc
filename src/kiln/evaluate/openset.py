"""Open-intent metrics of a support package: in-scope rows against out-of-scope rows.

A message is handed off when its out-of-scope score is above the package's calibrated threshold
or its confidence is below the hand-off threshold (the rule of ``/v1/apps/{name}:answer`` before
the FAQ is consulted). The open class is the hand-off: its F1 treats "handed off" as the
prediction "out of scope".
"""

from __future__ import annotations

from typing import Any

import numpy as np


def handed_off(app: dict[str, Any], probs: np.ndarray, oos_scores: np.ndarray | None) -> np.ndarray:
    """Which rows the support package hands to a human (before the FAQ is consulted)."""
    off = probs.max(axis=1) < float(app["handoff_threshold"])
    section = app.get("out_of_scope")
    if section is not None and oos_scores is not None:
        off |= oos_scores > float(section["threshold"])
    return np.asarray(off)


def open_intent_report(labels: np.ndarray, probs: np.ndarray, off: np.ndarray) -> dict[str, Any]:
    """In-scope accuracy and hand-off rate, out-of-scope recall and open-class F1.

    Args:
        labels: class index per row, -1 for an out-of-scope row.
        probs: class probabilities per row.
        off: whether each row is handed off.
    """
    is_oos = labels < 0
    inscope = ~is_oos
    caught = int((off & is_oos).sum())
    false_alarms = int((off & inscope).sum())
    missed = int((~off & is_oos).sum())
    correct = probs.argmax(axis=1) == labels
    return {
        "inscope_n": int(inscope.sum()),
        "oos_n": int(is_oos.sum()),
        "inscope_accuracy": float(correct[inscope].mean()) if inscope.any() else 0.0,
        "inscope_handoff_rate": float(off[inscope].mean()) if inscope.any() else 0.0,
        "answered_accuracy": float(correct[inscope & ~off].mean()) if (inscope & ~off).any() else 0.0,
        "oos_recall": float(off[is_oos].mean()) if is_oos.any() else 0.0,
        "open_f1": 2 * caught / (2 * caught + false_alarms + missed) if caught else 0.0,
    }
