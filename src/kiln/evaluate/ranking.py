"""Ranking metrics of a recommendation package on its recipe's test split.

Each user's last interaction is the target; the package ranks every item the user has not seen
(train and validation interactions), through the same ``Recommender`` that serves requests.

- HR@K: share of users whose target is in their top K.
- NDCG@K: ``1 / log2(rank + 2)`` when the target ranks within K (rank 0 is the top), else 0;
  with one relevant item per user its ideal DCG is 1.
- Recall@K: share of each user's held-out items found in the top K (one item per user here).
- Coverage@K: share of the catalogue that appears in at least one user's top K.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.errors import DataError


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, k: int = 10, recall_k: int = 20) -> dict[str, float]:
    """Metrics from a (users, items) score matrix (seen items at -inf) and each user's target item."""
    target_scores = scores[np.arange(len(targets)), targets]
    # Ties count against the target, so a constant scorer cannot look good.
    rank = (scores >= target_scores[:, None]).sum(axis=1) - 1
    hit = rank < k
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()),
        f"recall@{recall_k}": float((rank < recall_k).mean()),
        f"coverage@{k}": float(len(np.unique(top)) / scores.shape[1]),
    }


def evaluate_recommender(predictor: Any, *, batch_size: int = 256) -> dict[str, Any]:
    """Rank the test split of the package's recipe and return the report.

    Raises:
        DataError: the package records no recipe, or its data no longer matches the package.
    """
    from kiln.config import parse_recipe
    from kiln.data.interactions import load_interactions, split_leave_last_out
    from kiln.runtime.recommender import RecommendQuery

    manifest = predictor.manifest
    if not manifest.get("recipe"):
        raise DataError(f"{predictor.path}: the package records no recipe to find its test split")
    recipe = parse_recipe(manifest["recipe"], source=f"{predictor.path}/kiln.json recipe")
    assert recipe.data.dataset is not None
    splits = split_leave_last_out(
        load_interactions(recipe.data.dataset), min_interactions=recipe.recommend.min_interactions
    )
    if splits.item_ids != predictor.item_ids:
        raise DataError(f"{predictor.path}: the recipe's data now has a different item catalogue than the package")
    item_pos = {item: i for i, item in enumerate(predictor.item_ids)}
    users = [splits.user_ids[u - 1] for u in splits.test[:, 0]]
    targets = np.array([item_pos[splits.item_ids[i]] for i in splits.test[:, 1]])
    scores = np.concatenate(
        [
            predictor.scores([RecommendQuery(user_id=u) for u in users[i : i + batch_size]])
            for i in range(0, len(users), batch_size)
        ]
    )
    return {
        "task": "recommendation",
        "n": len(users),
        "items": predictor.num_items,
        **ranking_metrics(scores, targets),
        "data": f"test split of {splits.source.origin} (last interaction per user)",
        "data_fingerprint_matches": splits.fingerprint == manifest.get("data_fingerprint"),
    }
