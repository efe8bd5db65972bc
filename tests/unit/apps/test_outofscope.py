"""Out-of-scope calibration under the open-intent protocol, on generated embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.apps.outofscope import Scored, best_f1_threshold, calibrate, threshold_for_handoff
from kiln.config.schema import OutOfScopeConfig

CENTRES = np.eye(8, 16) * 5.0


def split(rng: np.random.Generator, n: int, classes: np.ndarray | None = None) -> Scored:
    """Messages of 8 intents (tight clusters); logits are negative squared distances to the centres."""
    labels = rng.choice(classes if classes is not None else np.arange(8), size=n)
    x = CENTRES[labels] + rng.normal(scale=0.6, size=(n, 16))
    return Scored(-((x[:, None, :] - CENTRES[None]) ** 2).sum(2), x, labels)


def far(rng: np.random.Generator, n: int) -> Scored:
    """Out-of-scope messages: embeddings away from every intent."""
    x = rng.normal(scale=0.6, size=(n, 16)) + np.r_[np.zeros(8), np.full(8, 3.0)]
    return Scored(-((x[:, None, :] - CENTRES[None]) ** 2).sum(2), x, np.full(n, -1))


def test_threshold_for_handoff_hands_off_at_most_the_share_asked() -> None:
    scores = np.arange(100, dtype=float)
    threshold = threshold_for_handoff(scores, 0.1)
    assert (scores > threshold).sum() == 10


def test_best_f1_threshold_separates_separable_scores() -> None:
    assert best_f1_threshold(np.array([0.1, 0.2, 0.3]), np.array([0.8, 0.9])) == 0.3


@pytest.mark.parametrize("method", ["mahalanobis", "knn", "energy", "msp"])
def test_calibrate_holds_the_inscope_handoff_target_and_reports_pseudo_unknown_recall(method: str) -> None:
    rng = np.random.default_rng(0)
    cfg = OutOfScopeConfig(method=method, max_inscope_handoff=0.1, holdout_fraction=0.25)
    result = calibrate(cfg, train=split(rng, 800), validation=split(rng, 400), examples=None, seed=0)
    assert result.report["held_out_intents"] == 2
    assert result.report["validation_inscope_handoff"] <= 0.1
    assert result.report["pseudo"]["oos_n"] > 50
    unseen = far(rng, 200)
    caught = (result.scorer.score(unseen.logits, unseen.embeddings) > result.threshold).mean()
    if method in ("mahalanobis", "knn"):  # distance scores catch messages far from every intent
        assert result.report["pseudo"]["oos_recall"] > 0.9 and caught > 0.9


def test_calibrate_fits_f1_on_the_users_out_of_scope_examples() -> None:
    rng = np.random.default_rng(1)
    cfg = OutOfScopeConfig(method="mahalanobis", objective="f1")
    result = calibrate(cfg, train=split(rng, 800), validation=split(rng, 400), examples=far(rng, 50), seed=0)
    assert result.report["examples"] == {"n": 50, "oos_recall": 1.0}
    assert result.report["validation_inscope_handoff"] < 0.02
