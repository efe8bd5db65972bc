"""Train a recommender (popularity, BPR matrix factorisation or two-tower) and write its package.

Reads top to bottom: load and split the interactions, encode features, fit the chosen model with
early stopping on validation NDCG@10 (full ranking, seen items excluded), then (by default)
train it afresh on train + validation for the chosen number of epochs, so that each user's most
recent known interaction informs the model, and write the package. The test interaction is never
trained on.

- BPR (Rendle et al. 2009): for each observed (user, item) pair, one uniformly sampled item
  should score lower; loss ``-log sigmoid(s_pos - s_neg)``.
- Two-tower with in-batch sampled softmax (Yi et al. 2019, "Sampling-Bias-Corrected Neural
  Modeling for Large Corpus Item Recommendations"): the other positives of a batch are the
  negatives, and the log of each item's frequency is subtracted from its logit so that popular
  items are not penalised for being sampled more often.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kiln.config.schema import Recipe
from kiln.data.interactions import InteractionSplits, load_interactions, split_leave_last_out
from kiln.errors import ConfigError
from kiln.runtime.towers import (
    RecommenderNet,
    build_field_specs,
    build_recommender,
    encode_fields,
    field_cardinalities,
    token_width,
)

logger = logging.getLogger(__name__)

KINDS = {"popularity": "popularity", "bpr-mf": "mf", "two-tower": "two-tower"}


@dataclass(frozen=True)
class RecommendFit:
    """The trained package and its best validation metrics."""

    package_dir: Path
    metrics: dict[str, float]
    steps: int
    samples_per_s: float


@dataclass(frozen=True)
class _Features:
    user_cats: torch.Tensor  # (users + 1, fields), row 0 the unknown user
    item_cats: torch.Tensor  # (items, fields)
    item_bags: torch.Tensor  # (items, token width)


def run(recipe: Recipe, run_dir: Path) -> RecommendFit:
    """Train the recipe's recommender and write ``<run_dir>/package``."""
    assert recipe.data.dataset is not None
    splits = split_leave_last_out(
        load_interactions(recipe.data.dataset), min_interactions=recipe.recommend.min_interactions
    )
    source = splits.source
    user_specs = build_field_specs(splits.users, source.user_fields)
    item_specs = build_field_specs(splits.items, source.item_fields)
    features = _encode(splits, user_specs, item_specs)
    params = {
        "kind": KINDS[recipe.recommend.model],
        "num_users": len(splits.user_ids) + 1,
        "num_items": len(splits.item_ids),
        "dim": recipe.recommend.embedding_dim,
        "hidden_size": recipe.recommend.hidden_size,
        "field_dim": recipe.recommend.field_dim,
        "user_cards": field_cardinalities(user_specs),
        "item_cards": field_cardinalities(item_specs),
        "item_token_width": token_width(item_specs),
    }
    net = build_recommender(params)
    start = time.perf_counter()
    known = np.concatenate([splits.train, splits.validation])
    if params["kind"] == "popularity":
        _count_items(net, splits.train)
        steps, best = 0, validation_metrics(net, features, splits)
        if recipe.recommend.refit_on_validation:
            _count_items(net, known)
    else:
        steps, epochs, best = _fit(net, features, splits, recipe)
        if recipe.recommend.refit_on_validation:
            torch.manual_seed(recipe.train_seed)
            net = build_recommender(params)
            steps += _refit(net, features, known, recipe, epochs)
    wall_s = time.perf_counter() - start
    samples_per_s = steps * recipe.train.batch_size / wall_s if steps else 0.0
    package_dir = run_dir / "package"
    _write_package(package_dir, net, params, splits, user_specs, item_specs, recipe, best, steps, wall_s)
    return RecommendFit(package_dir=package_dir, metrics=best, steps=steps, samples_per_s=samples_per_s)


def check_settings(recipe: Recipe, *, resume: bool = False, processes: int = 1) -> None:
    """Refuse the classifier-only training settings, resuming and several processes, before
    anything is built or written."""
    if resume:
        # Recommender training keeps no checkpoints (an epoch takes seconds), so there is nothing
        # to continue from; starting again with the same seed gives the same package.
        raise ConfigError(
            "resume: recommender training keeps no checkpoints, so it cannot resume; "
            "train again without --resume (the same seed gives the same package)"
        )
    if processes != 1:
        # The recommender trains in one process with no process group: each of several workers
        # would train the whole model alone and all of them would write the same package.
        raise ConfigError(
            f"--nproc-per-node/--nnodes: recommender training runs in a single process, got {processes} "
            "processes; train it without --nproc-per-node and --nnodes (one process takes seconds)"
        )
    t = recipe.train
    given = [
        f"train.{name}"
        for name, value, off in (
            ("layer_lr_decay", t.layer_lr_decay, 1.0),
            ("label_smoothing", t.label_smoothing, 0.0),
            ("rdrop_alpha", t.rdrop_alpha, 0.0),
            ("ema_decay", t.ema_decay, 0.0),
        )
        if value != off
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: classifier training settings; recommenders train with their own "
            "objective and take none of layer_lr_decay, label_smoothing, rdrop_alpha, ema_decay"
        )


def _count_items(net: RecommenderNet, pairs: np.ndarray) -> None:
    counts = np.bincount(pairs[:, 1], minlength=len(net.item_bias))
    with torch.no_grad():
        net.item_bias.copy_(torch.from_numpy(np.log1p(counts).astype(np.float32)))


def _encode(splits: InteractionSplits, user_specs: list[dict[str, Any]], item_specs: list[dict[str, Any]]) -> _Features:
    user_cats, _ = encode_fields(user_specs, splits.users.to_dict("records"))
    user_cats = np.concatenate([np.zeros((1, user_cats.shape[1]), np.int64), user_cats])
    item_cats, item_bags = encode_fields(item_specs, splits.items.to_dict("records"))
    return _Features(torch.from_numpy(user_cats), torch.from_numpy(item_cats), torch.from_numpy(item_bags))


def _fit(
    net: RecommenderNet, feats: _Features, splits: InteractionSplits, recipe: Recipe
) -> tuple[int, int, dict[str, float]]:
    """Train with early stopping on validation NDCG@10; return (steps, best epoch count, best metrics)."""
    cfg = recipe.train
    rng = np.random.default_rng(recipe.train_seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best: dict[str, float] = {}
    best_state = copy.deepcopy(net.state_dict())
    steps, stale, best_epochs = 0, 0, 1
    for epoch in range(cfg.epochs):
        steps = _train_epoch(net, feats, splits.train, recipe, optimizer, rng, steps)
        metrics = validation_metrics(net, feats, splits)
        logger.info("epoch %s: validation %s", epoch + 1, metrics)
        if not best or metrics["ndcg@10"] > best["ndcg@10"]:
            best, best_state, stale, best_epochs = metrics, copy.deepcopy(net.state_dict()), 0, epoch + 1
        else:
            stale += 1
        is_out_of_steps = cfg.max_steps is not None and steps >= cfg.max_steps
        if is_out_of_steps or (cfg.early_stopping_patience and stale >= cfg.early_stopping_patience):
            break
    net.load_state_dict(best_state)
    net.eval()
    return steps, best_epochs, best


def _refit(net: RecommenderNet, feats: _Features, pairs: np.ndarray, recipe: Recipe, epochs: int) -> int:
    """Train ``net`` from scratch for a fixed number of epochs on ``pairs``; return the steps taken."""
    rng = np.random.default_rng(recipe.train_seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
    steps = 0
    for _ in range(epochs):
        steps = _train_epoch(net, feats, pairs, recipe, optimizer, rng, steps)
    net.eval()
    return steps


def _train_epoch(
    net: RecommenderNet,
    feats: _Features,
    pairs: np.ndarray,
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    steps: int,
) -> int:
    cfg, rec = recipe.train, recipe.recommend
    num_items = len(feats.item_cats)
    counts = np.bincount(pairs[:, 1], minlength=num_items).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))
    net.train()
    order = rng.permutation(len(pairs))
    for start in range(0, len(order), cfg.batch_size):
        batch = torch.from_numpy(pairs[order[start : start + cfg.batch_size]])
        users, items = batch[:, 0], batch[:, 1]
        if net.kind == "mf":
            loss = _bpr_loss(net, users, items, rng, num_items)
        else:
            loss = _in_batch_loss(net, feats, users, items, rng, rec.id_dropout, log_q, rec.logq_correction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    return steps


def _bpr_loss(
    net: RecommenderNet, users: torch.Tensor, items: torch.Tensor, rng: np.random.Generator, num_items: int
) -> torch.Tensor:
    negatives = torch.from_numpy(rng.integers(0, num_items, size=len(users)))
    u = net.user_vectors(users, torch.empty(0))
    pos = (u * net.item_vectors(items, torch.empty(0), torch.empty(0))).sum(1) + net.item_bias[items]
    neg = (u * net.item_vectors(negatives, torch.empty(0), torch.empty(0))).sum(1) + net.item_bias[negatives]
    return -F.logsigmoid(pos - neg).mean()


def _in_batch_loss(
    net: RecommenderNet,
    feats: _Features,
    users: torch.Tensor,
    items: torch.Tensor,
    rng: np.random.Generator,
    id_dropout: float,
    log_q: torch.Tensor,
    is_corrected: bool,
) -> torch.Tensor:
    # Show some users as unknown (index 0, features kept) so the towers serve cold-start users.
    dropped = torch.from_numpy(rng.random(len(users)) < id_dropout)
    user_idx = torch.where(dropped, torch.zeros_like(users), users)
    u = net.user_vectors(user_idx, feats.user_cats[users])
    v = net.item_vectors(items, feats.item_cats[items], feats.item_bags[items])
    logits = u @ v.T + net.item_bias[items][None, :]
    if is_corrected:
        logits = logits - log_q[items][None, :]
    # The same item twice in a batch is not a negative for itself.
    duplicate = (items[None, :] == items[:, None]) & ~torch.eye(len(items), dtype=torch.bool)
    logits = logits.masked_fill(duplicate, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(items)))


@torch.no_grad()
def validation_metrics(net: RecommenderNet, feats: _Features, splits: InteractionSplits) -> dict[str, float]:
    """HR@10 and NDCG@10 of each user's validation item, ranked over all items not seen in train."""
    net.eval()
    users = torch.from_numpy(splits.validation[:, 0])
    u = net.user_vectors(users, feats.user_cats[users])
    v = net.item_vectors(torch.arange(len(splits.item_ids)), feats.item_cats, feats.item_bags)
    scores = (u @ v.T + net.item_bias[None, :]).numpy()
    row_of = {int(user): row for row, user in enumerate(splits.validation[:, 0])}
    rows = np.array([row_of[int(u)] for u in splits.train[:, 0]])
    scores[rows, splits.train[:, 1]] = -np.inf
    target = scores[np.arange(len(users)), splits.validation[:, 1]]
    rank = (scores > target[:, None]).sum(axis=1)
    hit = rank < 10
    net.train()
    return {
        "hr@10": float(hit.mean()),
        "ndcg@10": float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()),
    }


def _write_package(
    dest: Path,
    net: RecommenderNet,
    params: dict[str, Any],
    splits: InteractionSplits,
    user_specs: list[dict[str, Any]],
    item_specs: list[dict[str, Any]],
    recipe: Recipe,
    metrics: dict[str, float],
    steps: int,
    wall_s: float,
) -> None:
    import pandas as pd
    from safetensors.torch import save_file

    from kiln.runtime.package import finalize_package, staged_package

    source = splits.source
    known = np.concatenate([splits.train, splits.validation])
    seen = pd.DataFrame(
        {
            "user_id": [splits.user_ids[u - 1] for u in known[:, 0]],
            "item_id": [splits.item_ids[i] for i in known[:, 1]],
        }
    )
    with staged_package(dest) as staging:
        splits.users.to_csv(staging / "users.csv", index=False)
        splits.items.to_csv(staging / "items.csv", index=False)
        seen.to_csv(staging / "seen.csv", index=False)
        state = {k: t.detach().cpu().contiguous() for k, t in net.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        finalize_package(
            staging,
            {
                "name": recipe.name,
                "task": "recommendation",
                "labels": [],
                "input_schema": {
                    "kind": "recommendation",
                    "user_features": [s["name"] for s in user_specs],
                },
                "preprocessing": {
                    "kind": "recommendation",
                    "user_fields": user_specs,
                    "item_fields": item_specs,
                    "users_file": "users.csv",
                    "items_file": "items.csv",
                    "seen_file": "seen.csv",
                    "item_title_column": source.item_title_column,
                },
                "format": "torch",
                "precision": "fp32",
                "architecture": {"family": "recommender", "params": params, "weights": "model.safetensors"},
                "lineage": {"parent": None, "transformation": "train", "settings": {"steps": steps}},
                "metrics": {"validation": metrics},
                "data_fingerprint": splits.fingerprint,
                "data": {
                    "origin": source.origin,
                    "users": len(splits.user_ids),
                    "items": len(splits.item_ids),
                    "train": len(splits.train),
                    "validation": len(splits.validation),
                    "test": len(splits.test),
                },
                "recipe": recipe.model_dump(mode="json"),
                "training": {"train_wall_s": round(wall_s, 3)},
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
