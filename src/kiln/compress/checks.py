"""Compare a compressed package with its parent on the same raw inputs, through the runtime."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kiln.runtime.predictor import Predictor

CHECK_BATCH_SIZE = 32


def logits_of_inputs(predictor: Predictor, inputs: Sequence[Any]) -> np.ndarray:
    """Raw logits of a package for raw inputs, in batches (the runtime's features and engine)."""
    parts = [
        predictor.engine(predictor.preprocessor(inputs[i : i + CHECK_BATCH_SIZE]))
        for i in range(0, len(inputs), CHECK_BATCH_SIZE)
    ]
    return np.concatenate(parts, axis=0).astype(np.float32)


def compare_predictions(
    parent: Predictor,
    child: Predictor,
    inputs: Sequence[Any],
    labels: Sequence[str] | None,
) -> dict[str, Any]:
    """Logit difference, prediction agreement and (with labels) accuracy of child vs parent."""
    ref = logits_of_inputs(parent, inputs)
    out = logits_of_inputs(child, inputs)
    ref_pred, out_pred = ref.argmax(axis=1), out.argmax(axis=1)
    result: dict[str, Any] = {
        "n_inputs": len(inputs),
        "max_abs_logit_diff": float(np.abs(ref - out).max()),
        "prediction_agreement": float((ref_pred == out_pred).mean()),
    }
    if labels is not None:
        index = {name: i for i, name in enumerate(parent.labels)}
        truth = np.array([index.get(str(lab), -1) for lab in labels])
        result["accuracy_parent"] = float((ref_pred == truth).mean())
        result["accuracy"] = float((out_pred == truth).mean())
        result["accuracy_change"] = result["accuracy"] - result["accuracy_parent"]
    return result


def check_against_parent(
    parent: Any, child: Any, inputs: Sequence[Any], labels: Sequence[str] | None
) -> dict[str, Any]:
    """Load two package folders on CPU and ``compare_predictions`` on raw inputs."""
    import kiln.runtime

    parent_predictor = kiln.runtime.load_classifier(parent, device="cpu", verify=False)
    child_predictor = kiln.runtime.load_classifier(child, device="cpu", verify=False)
    return compare_predictions(parent_predictor, child_predictor, inputs, labels)
