"""Validation during training: the metrics of a split scored by every rank, and the best weights kept."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.runtime.architectures import logits_of
from kiln.runtime.weights import state_tensors
from kiln.train.distributed import DistInfo, all_reduce_sum
from kiln.train.features import Features


@dataclass(frozen=True)
class Evaluation:
    """What every evaluation during training needs, fixed for the whole run."""

    scored: nn.Module  # evaluated, kept as the best weights and packaged: the average when there is one
    net: nn.Module  # runs the forward pass: the DDP wrapper, or the average itself
    features: Features
    labels: np.ndarray | None  # None for a language model (its batches carry their targets)
    num_labels: int
    batch_size: int
    autocast: Any
    best_path: Path
    metrics_log: Path


def evaluate(evaluation: Evaluation, info: DistInfo) -> dict[str, float]:
    """Accuracy, macro-F1 and mean loss on the split (a language model: mean token loss and
    perplexity), each rank scoring a strided shard."""
    net, features, labels = evaluation.net, evaluation.features, evaluation.labels
    if labels is None:
        return _evaluate_language_model(evaluation, info)
    num_labels, batch_size = evaluation.num_labels, evaluation.batch_size
    net.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    shard = np.arange(len(features))[info.rank :: info.world_size]
    with torch.no_grad():
        for start in range(0, len(shard), batch_size):
            index = shard[start : start + batch_size]
            batch = {k: t.to(info.device) for k, t in features.batch(index).items()}
            target = torch.from_numpy(labels[index])
            with evaluation.autocast:
                logits = logits_of(net, batch)
            logits = logits.float().cpu()
            loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
            pred = logits.argmax(dim=1)
            confusion.index_put_((target, pred), torch.ones(len(index), dtype=torch.float64), accumulate=True)
    all_reduce_sum(info, confusion)
    all_reduce_sum(info, loss_sum)
    total = confusion.sum().item()
    true_pos = confusion.diag()
    precision = true_pos / confusion.sum(dim=0).clamp(min=1)
    recall = true_pos / confusion.sum(dim=1).clamp(min=1)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros(1, dtype=torch.float64)
    )
    return {
        "accuracy": true_pos.sum().item() / total,
        "macro_f1": f1.mean().item(),
        "loss": loss_sum.item() / total,
    }


def language_model_loss(
    net: nn.Module, features: dict[str, torch.Tensor], autocast: Any, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Summed next-token cross-entropy of a causal language model over the batch's target tokens.

    ``features["labels"]`` holds each position's own token, -100 where no loss is taken; the
    logits at position t predict the label at t + 1.
    """
    labels = features["labels"]
    inputs = {k: v for k, v in features.items() if k != "labels"}
    with autocast:
        logits = net(**inputs).logits
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


def _evaluate_language_model(evaluation: Evaluation, info: DistInfo) -> dict[str, float]:
    """Mean next-token loss over every target token of the split, and its perplexity."""
    import math

    net, features = evaluation.net, evaluation.features
    net.eval()
    totals = torch.zeros(2, dtype=torch.float64)  # summed loss, target tokens
    shard = np.arange(len(features))[info.rank :: info.world_size]
    with torch.no_grad():
        for start in range(0, len(shard), evaluation.batch_size):
            index = shard[start : start + evaluation.batch_size]
            batch = {k: t.to(info.device) for k, t in features.batch(index).items()}
            totals[0] += language_model_loss(net, batch, evaluation.autocast).double().cpu()
            totals[1] += int((batch["labels"][:, 1:] != -100).sum())
    all_reduce_sum(info, totals)
    loss = totals[0].item() / max(1.0, totals[1].item())
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def save_weights_atomic(model: nn.Module, path: Path) -> None:
    """Write the model's weights to ``path`` through a temporary file, so a reader never sees half of them."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state_tensors(model), str(tmp))
    os.replace(tmp, path)
