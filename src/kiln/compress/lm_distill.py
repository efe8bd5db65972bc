"""Distillation of a causal language model into a student with fewer layers.

The student is the teacher's config with ``distill.num_layers`` decoder layers, initialised from
uniformly spaced teacher layers (and the teacher's embeddings, final norm and output head), as
DistilBERT and DistilGPT-2 start from every other teacher layer. Loss per batch, over the tokens
the text is scored on (every token of packed documents; the reply of a conversation):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))   (Hinton et al. 2015)
    + (1 - alpha) * CE(student, next token)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kiln.compress.distill_loop import adamw, soft_target_loss, uniform_layer_map, warmup_linear_decay
from kiln.compress.errors import CompressError
from kiln.config.schema import DistillConfig
from kiln.data.order import epoch_order

# Settings of compress.distill that shape classifiers' students or data; a causal LM student keeps
# the teacher's widths and learns from the recipe's text.
_CLASSIFIER_ONLY = ("hidden_size", "num_heads", "intermediate_size", "unlabelled_file")


def check_settings(cfg: DistillConfig) -> None:
    """Refuse distill settings that have no meaning for a causal language model.

    Raises:
        CompressError: naming the setting and its value.
    """
    defaults = DistillConfig()
    changed = [name for name in _CLASSIFIER_ONLY if getattr(cfg, name) != getattr(defaults, name)]
    if cfg.hidden_weight or cfg.attention_weight:
        changed += [n for n in ("hidden_weight", "attention_weight") if getattr(cfg, n)]
    if cfg.augment.methods:
        changed.append("augment.methods")
    if changed:
        raise CompressError(
            f"distill of a text-generation package keeps the teacher's widths and trains on the recipe's "
            f"text; {', '.join(f'distill.{n}' for n in changed)} must stay unset "
            "(set num_layers, epochs, max_steps, batch_size, lr, temperature, alpha)"
        )


def build_student(teacher: Any, cfg: DistillConfig) -> tuple[Any, list[int]]:
    """The student causal LM and, for each of its layers, the teacher layer it starts from.

    Raises:
        CompressError: the student would have more layers than its teacher.
    """
    import torch
    from transformers import AutoModelForCausalLM

    t_layers = int(teacher.config.num_hidden_layers)
    layers = cfg.num_layers or math.ceil(t_layers / 2)
    if layers > t_layers:
        raise CompressError(f"distill: the student would be bigger than its teacher (num_layers {layers} > {t_layers})")
    layer_map = uniform_layer_map(t_layers, layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds
        config.layer_types = [config.layer_types[i] for i in layer_map]
    student = AutoModelForCausalLM.from_config(config)
    if cfg.init == "teacher-layers":
        prefix = _layers_prefix(teacher, t_layers)
        source = teacher.state_dict()
        with torch.no_grad():
            for name, tensor in student.state_dict().items():
                key = name
                if name.startswith(prefix):
                    index, rest = name[len(prefix) :].split(".", 1)
                    key = f"{prefix}{layer_map[int(index)]}.{rest}"
                tensor.copy_(source[key])
    return student, layer_map


def distill_causal_lm(
    teacher: Any,
    student: Any,
    rows: tuple[list[list[int]], list[list[int]] | None],
    cfg: DistillConfig,
    *,
    seed: int,
) -> dict[str, Any]:
    """Train ``student`` in place on ``rows`` (token ids and loss masks) to imitate ``teacher``.

    Returns:
        steps, epochs, sequences, tokens, per-epoch mean losses and the wall time.
    """
    import torch

    from kiln.runtime.weights import pick_device

    token_ids, masks = rows
    masks = masks if masks is not None else [[1] * len(ids) for ids in token_ids]
    torch.manual_seed(seed)
    device = pick_device(None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    teacher.to(device).eval()
    student.to(device).train()
    params = list(student.parameters())
    per_epoch = math.ceil(len(token_ids) / cfg.batch_size)
    total = min(cfg.epochs * per_epoch, cfg.max_steps or cfg.epochs * per_epoch)
    optimizer = adamw(params, cfg)
    scheduler = warmup_linear_decay(optimizer, cfg.warmup_ratio, total)
    alpha = 1.0 if cfg.ignore_labels else cfg.alpha
    history: list[dict[str, float]] = []
    step, tokens, start = 0, 0, time.perf_counter()
    while step < total:
        sums = {"loss": 0.0, "soft": 0.0, "hard": 0.0}
        batches = 0
        order = epoch_order(len(token_ids), seed, len(history))
        for begin in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            index = order[begin : begin + cfg.batch_size]
            ids, attention, weight = right_padded([token_ids[i] for i in index], [masks[i] for i in index], device)
            with torch.no_grad(), autocast:
                t_logits = teacher(input_ids=ids, attention_mask=attention).logits
            with autocast:
                s_logits = student(input_ids=ids, attention_mask=attention).logits
            scored = weight[:, 1:].bool()  # position t predicts token t + 1
            s_scored, t_scored = s_logits[:, :-1][scored].float(), t_logits[:, :-1][scored].float()
            soft = soft_target_loss(s_scored, t_scored, cfg.temperature)
            hard = torch.nn.functional.cross_entropy(s_scored, ids[:, 1:][scored])
            loss = alpha * soft + (1 - alpha) * hard
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            batches += 1
            tokens += int(scored.sum())
            for name, value in (("loss", loss), ("soft", soft), ("hard", hard)):
                sums[name] += float(value.detach())
        history.append({k: round(v / max(1, batches), 6) for k, v in sums.items()})
    student.eval().cpu()
    teacher.cpu()
    return {
        "steps": step,
        "epochs": len(history),
        "sequences": len(token_ids),
        "trained_tokens": tokens,
        "loss_history": history,
        "wall_s": round(time.perf_counter() - start, 3),
    }


def _layers_prefix(model: Any, num_layers: int) -> str:
    """The state-dict prefix of the decoder's layer list (``model.layers.`` in Llama)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return f"{name}."
    raise CompressError(f"distill: cannot find the {num_layers} decoder layers of {type(model).__name__}")


def right_padded(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], device: Any) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and loss weights of a batch (padding never scored)."""
    import torch

    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    attention = np.zeros_like(ids)
    weight = np.zeros_like(ids)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(row)] = row
        attention[i, : len(row)] = 1
        weight[i, : len(row)] = mask
    return torch.from_numpy(ids).to(device), torch.from_numpy(attention).to(device), torch.from_numpy(weight).to(device)
