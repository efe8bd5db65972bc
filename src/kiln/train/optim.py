"""AdamW with decoupled weight decay and a warmup + decay learning-rate schedule."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from kiln.config.schema import TrainConfig
from kiln.errors import ConfigError

# Parameter names of a transformer encoder's layers (HF BERT family: encoder.layer.<i>.).
_LAYER = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)embeddings\.")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and normalisation weights (1-d parameters) get no weight decay.

    With ``layer_lr_decay`` below 1 each encoder layer gets its own learning rate: the head and
    the top layer ``lr``, layer ``i`` of ``L`` ``lr * decay ** (L - i)``, the embeddings
    ``lr * decay ** (L + 1)``. The schedule scales every group by the same factor.
    """
    depth = _depths(model) if cfg.layer_lr_decay < 1.0 else {}
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((depth.get(name, 0), param.ndim >= 2), []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": cfg.lr * cfg.layer_lr_decay**d,
                "weight_decay": cfg.weight_decay if decays else 0.0,
            }
            for (d, decays), params in sorted(groups.items())
        ],
        lr=cfg.lr,
    )


def _depths(model: nn.Module) -> dict[str, int]:
    """How many layers below the top each parameter sits (0: top layer and head)."""
    layers = {name: int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER.search(name))}
    if not layers:
        raise ConfigError(
            "train.layer_lr_decay needs a transformer encoder (encoder.layer.<i> parameters); "
            "this model has none; set train.layer_lr_decay=1"
        )
    top = max(layers.values())
    depth = {name: top - i for name, i in layers.items()}
    for name, _ in model.named_parameters():
        if _EMBEDDINGS.search(name):
            depth[name] = top + 1
    return depth


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then linear/cosine decay or constant."""
    warmup = int(cfg.warmup_ratio * total_steps)
    schedule = cfg.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
