"""The distillation loop: a student learns a teacher's soft targets, labels and inner states.

Loss per batch (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"; TinyBERT,
Jiao et al. 2020):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
    + (1 - alpha) * CE(student, labels)                      (labelled rows only)
    + hidden_weight * MSE(W h_student, h_teacher)            (embeddings and mapped layers)
    + attention_weight * MSE(A_student, A_teacher)           (mapped layers)

``W`` is a learned projection when the widths differ (identity otherwise) and is dropped after
training. When a student layer has fewer heads than its teacher layer, both attention maps are
averaged over heads first. The optimiser is AdamW with linear warmup then linear decay; this
small loop lives here rather than in ``kiln.train`` so the compress stage depends only on the
runtime, data and config layers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.config.schema import DistillConfig
from kiln.data.order import epoch_order

if TYPE_CHECKING:
    import torch

UNLABELLED = -1  # label id of a text that only has the teacher's soft targets to learn from


@dataclass(frozen=True)
class DistillData:
    """Tokenised training texts and their label ids (``UNLABELLED`` for none)."""

    token_ids: Sequence[Sequence[int]]  # one list of token ids per text
    labels: np.ndarray  # int64 label ids, same length as token_ids

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for {len(self.token_ids)} texts")


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer for each student layer, evenly spaced and ending at the last one (TinyBERT)."""
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def soft_target_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """T^2-scaled KL divergence of the softened student from the softened teacher, per row mean."""
    import torch.nn.functional as F

    return (temperature**2) * F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def distill_model(
    teacher: Any,
    student: Any,
    data: DistillData,
    collate: Callable[[Sequence[Sequence[int]]], dict[str, np.ndarray]],
    cfg: DistillConfig,
    *,
    layer_map: list[int],
    seed: int,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place to imitate ``teacher``; return the loss history and counts.

    Args:
        teacher: a HF sequence classifier, left unchanged.
        student: a HF sequence classifier with ``len(layer_map)`` encoder layers.
        data: tokenised texts and label ids.
        collate: pads a list of token-id lists into model features (the package's preprocessor).
        cfg: loss weights, temperature and optimiser settings.
        layer_map: teacher layer index for each student layer (for hidden/attention transfer).
        seed: seeds shuffling and dropout.
        epochs: passes over the data; ``cfg.epochs`` when empty.
    """
    import torch

    from kiln.runtime.weights import pick_device

    if len(data.token_ids) == 0:
        raise ValueError("no training texts to distil on")
    torch.manual_seed(seed)
    device = pick_device(None)
    lengths = np.array([len(ids) for ids in data.token_ids]) if cfg.group_by_length else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    teacher.to(device).eval()
    student.to(device).train()
    wants_hidden, wants_attention = cfg.hidden_weight > 0, cfg.attention_weight > 0
    if wants_attention:
        for model in (teacher, student):
            model.set_attn_implementation("eager")  # SDPA does not return attention maps
    projection = _hidden_projection(student, teacher, device) if wants_hidden else None
    trainable = list(student.parameters()) + (list(projection.parameters()) if projection is not None else [])
    n_epochs = epochs or cfg.epochs
    steps_per_epoch = math.ceil(len(data.token_ids) / cfg.batch_size)
    total = min(n_epochs * steps_per_epoch, cfg.max_steps or n_epochs * steps_per_epoch)
    optimizer = adamw(trainable, cfg)
    scheduler = warmup_linear_decay(optimizer, cfg.warmup_ratio, total)
    alpha = 1.0 if cfg.ignore_labels else cfg.alpha
    history: list[dict[str, float]] = []
    step, start = 0, time.perf_counter()
    while step < total:
        sums = {"loss": 0.0, "soft": 0.0, "hard": 0.0, "hidden": 0.0, "attention": 0.0}
        batches = 0
        order = epoch_order(len(data.token_ids), seed, len(history), lengths=lengths, batch_size=cfg.batch_size)
        for begin in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            index = order[begin : begin + cfg.batch_size]
            features = collate([data.token_ids[i] for i in index])
            tensors = {k: torch.from_numpy(v).to(device) for k, v in features.items()}
            labels = torch.from_numpy(data.labels[index]).to(device)
            extra = {"output_hidden_states": wants_hidden, "output_attentions": wants_attention}
            with torch.no_grad(), autocast:
                t_out = teacher(**tensors, **extra)
            with autocast:
                s_out = student(**tensors, **extra)
            parts = {"soft": soft_target_loss(s_out.logits.float(), t_out.logits.float(), cfg.temperature)}
            labelled = labels != UNLABELLED
            if alpha < 1.0 and bool(labelled.any()):
                parts["hard"] = torch.nn.functional.cross_entropy(s_out.logits[labelled].float(), labels[labelled])
            loss = alpha * parts["soft"] + (1 - alpha) * parts.get("hard", 0.0)
            mask = tensors["attention_mask"].float()
            if projection is not None:
                parts["hidden"] = _hidden_loss(s_out, t_out, projection, layer_map, mask)
                loss = loss + cfg.hidden_weight * parts["hidden"]
            if wants_attention:
                parts["attention"] = _attention_loss(s_out, t_out, layer_map)
                loss = loss + cfg.attention_weight * parts["attention"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            batches += 1
            sums["loss"] += float(loss.detach())
            for name, value in parts.items():
                sums[name] += float(value.detach())
        history.append({k: round(v / max(1, batches), 6) for k, v in sums.items()})
    student.eval().cpu()
    teacher.cpu()
    if wants_attention:
        student.set_attn_implementation("sdpa")
    return {
        "steps": step,
        "epochs": len(history),
        "texts": len(data.token_ids),
        "labelled_texts": int((data.labels != UNLABELLED).sum()),
        "loss_history": history,
        "wall_s": round(time.perf_counter() - start, 3),
    }


def _hidden_projection(student: Any, teacher: Any, device: Any) -> Any:
    import torch

    d_s, d_t = int(student.config.hidden_size), int(teacher.config.hidden_size)
    if d_s == d_t:
        return torch.nn.Identity()
    return torch.nn.Linear(d_s, d_t).to(device)


def _hidden_loss(s_out: Any, t_out: Any, projection: Any, layer_map: list[int], mask: Any) -> Any:
    pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]  # 0: embeddings
    total = 0.0
    for s_idx, t_idx in pairs:
        diff = (projection(s_out.hidden_states[s_idx].float()) - t_out.hidden_states[t_idx].float()) ** 2
        total = total + (diff.mean(dim=-1) * mask).sum() / mask.sum()
    return total / len(pairs)


def _attention_loss(s_out: Any, t_out: Any, layer_map: list[int]) -> Any:
    import torch.nn.functional as F

    total: float | torch.Tensor = 0.0
    for i, t_idx in enumerate(layer_map):
        s_att, t_att = s_out.attentions[i].float(), t_out.attentions[t_idx].float()
        if s_att.shape[1] != t_att.shape[1]:
            s_att, t_att = s_att.mean(dim=1), t_att.mean(dim=1)
        total = total + F.mse_loss(s_att, t_att)
    return total / len(layer_map)


def adamw(params: list[Any], cfg: DistillConfig) -> Any:
    """AdamW at ``cfg.lr`` with ``cfg.weight_decay`` on matrices only."""
    import torch

    # Biases and normalisation weights (1-d) get no weight decay, as in BERT's recipe.
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_linear_decay(optimizer: Any, warmup_ratio: float, total_steps: int) -> Any:
    """Linear warmup over ``warmup_ratio`` of ``total_steps``, then linear decay to zero."""
    import torch

    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
