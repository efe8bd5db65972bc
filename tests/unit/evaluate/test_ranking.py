"""Ranking metrics on hand-made score matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kiln.evaluate.ranking import ranking_metrics


def test_ranking_metrics_scores_ranks_of_held_out_items() -> None:
    scores = np.array(
        [
            [5.0, 4.0, 3.0, 2.0],  # target 0 ranks first
            [5.0, 4.0, 3.0, 2.0],  # target 2 ranks third
            [-np.inf, 2.0, 1.0, 3.0],  # target 1 ranks second among unseen items
        ]
    )
    metrics = ranking_metrics(scores, np.array([0, 2, 1]), k=2, recall_k=3)
    assert metrics["hr@2"] == pytest.approx(2 / 3)
    assert metrics["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert metrics["recall@3"] == pytest.approx(1.0)
    assert metrics["coverage@2"] == pytest.approx(3 / 4)  # items 0, 1 and 3 appear in some top 2


def test_ranking_metrics_counts_ties_against_the_target() -> None:
    # Ten equal scores: the target counts as last of the ten, wherever it sits.
    metrics = ranking_metrics(np.zeros((1, 10)), np.array([0]), k=10, recall_k=20)
    assert metrics["ndcg@10"] == pytest.approx(1 / math.log2(11))
    assert ranking_metrics(np.zeros((1, 10)), np.array([0]), k=5, recall_k=9)["hr@5"] == 0.0
