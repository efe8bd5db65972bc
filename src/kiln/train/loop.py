"""The training loop: AdamW, warmup + decay, clipping, accumulation, bf16 autocast, R-Drop,
weight averaging, evaluation, early stopping, best-checkpoint selection and exact resume, on one
process or under DDP.

Data order is a pure function of (seed, epoch), so a resumed or data-parallel run sees the same
global batches as an uninterrupted single-process one. Under DDP every rank takes a strided
shard of each global batch and scales its loss so that the averaged gradient equals the
single-process mean over the whole global batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.config.schema import TrainConfig
from kiln.data.order import epoch_order
from kiln.errors import ConfigError
from kiln.progress import progress_bar
from kiln.runtime.architectures import logits_of
from kiln.train.checkpoint import latest_checkpoint, load_checkpoint, remove_stale, save_checkpoint
from kiln.train.distributed import DistInfo, all_reduce_sum, barrier, broadcast_from_main, gather_objects
from kiln.train.ema import WeightAverage
from kiln.train.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


class Features(Protocol):
    """A split that can produce a batch of model inputs for given example indices."""

    def __len__(self) -> int: ...

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]: ...


@dataclass
class FitResult:
    """What a finished (or early-stopped) training run measured."""

    best_metrics: dict[str, float]
    best_step: int
    steps: int
    stopped_early: bool
    train_wall_s: float
    samples_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_score: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_wall_s: float = 0.0
    samples_seen: int = 0


def fit(
    model: nn.Module,
    *,
    train: Features,
    train_labels: np.ndarray,
    validation: Features,
    validation_labels: np.ndarray,
    num_labels: int,
    cfg: TrainConfig,
    seed: int,
    info: DistInfo,
    run_dir: Path,
    resume: bool,
    eval_batch_size: int,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best weights seen on validation."""
    world, accum = info.world_size, cfg.grad_accum_steps
    if cfg.batch_size < world * accum:
        raise ConfigError(
            f"train.batch_size must be >= processes x grad_accum_steps = {world * accum}, got {cfg.batch_size}"
        )
    n = len(train)
    full, rest = divmod(n, cfg.batch_size)
    batches_per_epoch = full + (1 if rest >= world * accum else 0)
    total_steps = batches_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    lengths = train.lengths() if cfg.group_by_length and hasattr(train, "lengths") else None
    model.to(info.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    # What is evaluated, kept as the best weights and packaged: the average when there is one.
    scored: nn.Module = ema.shadow if ema is not None else model
    net: nn.Module = model
    if info.is_distributed:
        net = nn.parallel.DistributedDataParallel(model)
    ckpt_dir = run_dir / "checkpoints"
    best_path = run_dir / "best" / "model.safetensors"
    metrics_log = run_dir / "metrics.jsonl"

    state = _State()
    if info.is_main:
        remove_stale(ckpt_dir)
    barrier(info)
    ckpt = latest_checkpoint(ckpt_dir) if resume else None
    if ckpt is not None:
        trainer_state = load_checkpoint(ckpt, model, average=ema.shadow if ema is not None else None)
        if ema is not None:
            ema.updates = int(trainer_state.get("ema_updates", 0))
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        rng_states = trainer_state["torch_rng"]
        torch.set_rng_state(rng_states[min(info.rank, len(rng_states) - 1)])
        state = _State(**trainer_state["loop"])
        if info.is_main:
            _truncate_log(metrics_log, state.step)
            logger.info("resumed from %s (step %d)", ckpt.path, state.step)
    elif info.is_main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for old in (metrics_log, best_path):
            old.unlink(missing_ok=True)
    barrier(info)

    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    loop_started = time.perf_counter()
    stop = state.step >= total_steps
    with progress_bar(total_steps, "train", enabled=cfg.progress and info.is_main, completed=state.step) as bar:
        while not stop and state.epoch < cfg.epochs:
            order = epoch_order(n, seed, state.epoch, lengths=lengths, batch_size=cfg.batch_size)
            while state.batch_in_epoch < batches_per_epoch:
                b = state.batch_in_epoch
                global_index = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                started = time.perf_counter()
                net.train()
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                shards = np.array_split(global_index[info.rank :: world], accum)
                for k, micro in enumerate(shards):
                    sync = (
                        contextlib.nullcontext()
                        if (k == accum - 1 or not isinstance(net, nn.parallel.DistributedDataParallel))
                        else net.no_sync()
                    )
                    with sync:
                        rng = np.random.default_rng([seed, state.epoch, b, k, info.rank])
                        features = {key: t.to(info.device) for key, t in train.batch(micro, rng).items()}
                        target = torch.from_numpy(train_labels[micro]).to(info.device)
                        loss = _training_loss(net, features, target, cfg, autocast)
                        (loss * (world / len(global_index))).backward()
                    step_loss += loss.item()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                    # Buffers such as batch norm's running statistics are updated by each rank's
                    # own shard; DDP runs every forward with rank 0's, so the average takes those.
                    broadcast_from_main(info, ema.float_buffers())
                state.step += 1
                state.batch_in_epoch += 1
                state.samples_seen += len(global_index)
                elapsed = time.perf_counter() - started
                state.train_wall_s += elapsed

                if state.step % cfg.log_every_steps == 0 or state.step == total_steps:
                    mean_loss = _global_mean(info, step_loss, len(global_index))
                    speed = len(global_index) / elapsed if elapsed > 0 else 0.0
                    _log(
                        info,
                        metrics_log,
                        {
                            "type": "train",
                            "step": state.step,
                            "epoch": state.epoch,
                            "loss": mean_loss,
                            "lr": scheduler.get_last_lr()[0],
                            "samples_per_s": speed,
                            # Wall time since this process entered the loop: steps, logging,
                            # progress, evaluations and checkpoints all included.
                            "elapsed_s": time.perf_counter() - loop_started,
                        },
                    )
                    bar.update(0, loss=f"{mean_loss:.4f}", speed=f"{speed:.0f}")
                bar.update(1)

                at_epoch_end = state.batch_in_epoch >= batches_per_epoch
                if at_epoch_end:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                evaluate_now = at_epoch_end or (
                    cfg.eval_every_steps is not None and state.step % cfg.eval_every_steps == 0
                )
                if state.step >= total_steps:
                    stop = True
                    evaluate_now = True
                if evaluate_now:
                    if _evaluate_and_track(
                        scored,
                        scored if ema is not None else net,
                        validation,
                        validation_labels,
                        num_labels,
                        cfg,
                        info,
                        state,
                        autocast,
                        eval_batch_size,
                        best_path,
                        metrics_log,
                    ):
                        stop = True
                if stop or at_epoch_end or state.step % cfg.checkpoint_every_steps == 0:
                    _checkpoint(info, ckpt_dir, model, optimizer, scheduler, state, cfg.keep_checkpoints, ema)
                if stop or at_epoch_end:
                    break

    if best_path.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best_path)))
    samples_per_s = state.samples_seen / state.train_wall_s if state.train_wall_s else 0.0
    return FitResult(
        best_metrics=state.best_metrics,
        best_step=state.best_step,
        steps=state.step,
        stopped_early=state.bad_evals >= cfg.early_stopping_patience > 0,
        train_wall_s=state.train_wall_s,
        samples_per_s=samples_per_s,
        history=state.history,
    )


def _training_loss(
    net: nn.Module, features: dict[str, torch.Tensor], target: torch.Tensor, cfg: TrainConfig, autocast: Any
) -> torch.Tensor:
    """Summed cross-entropy of a micro-batch; with ``rdrop_alpha`` the R-Drop objective.

    R-Drop (Liang et al., 2021) passes the batch through the network twice, so that dropout draws
    two different sub-networks, and adds ``alpha`` times the symmetric KL divergence between the
    two predicted distributions to the mean of their cross-entropies. Both passes go through the
    model as one batch of twice the size.
    """
    if cfg.rdrop_alpha <= 0:
        with autocast:
            logits = logits_of(net, features)
        return F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=cfg.label_smoothing)
    with autocast:
        logits = logits_of(net, {key: torch.cat([t, t]) for key, t in features.items()})
    first, second = logits.float().chunk(2)
    cross_entropy = 0.5 * (
        F.cross_entropy(first, target, reduction="sum", label_smoothing=cfg.label_smoothing)
        + F.cross_entropy(second, target, reduction="sum", label_smoothing=cfg.label_smoothing)
    )
    log_p, log_q = first.log_softmax(dim=-1), second.log_softmax(dim=-1)
    divergence = 0.5 * (
        F.kl_div(log_p, log_q, reduction="sum", log_target=True)
        + F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    )
    return cross_entropy + cfg.rdrop_alpha * divergence


def evaluate_features(
    net: nn.Module,
    features: Features,
    labels: np.ndarray,
    num_labels: int,
    info: DistInfo,
    batch_size: int,
    autocast: Any,
) -> dict[str, float]:
    """Accuracy, macro-F1 and mean loss on a split, each rank scoring a strided shard."""
    net.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    shard = np.arange(len(features))[info.rank :: info.world_size]
    with torch.no_grad():
        for start in range(0, len(shard), batch_size):
            index = shard[start : start + batch_size]
            batch = {k: t.to(info.device) for k, t in features.batch(index).items()}
            target = torch.from_numpy(labels[index])
            with autocast:
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


def _evaluate_and_track(
    model: nn.Module,
    net: nn.Module,
    validation: Features,
    labels: np.ndarray,
    num_labels: int,
    cfg: TrainConfig,
    info: DistInfo,
    state: _State,
    autocast: Any,
    batch_size: int,
    best_path: Path,
    metrics_log: Path,
) -> bool:
    """Evaluate, keep the best weights, and return whether early stopping says stop."""
    metrics = evaluate_features(net, validation, labels, num_labels, info, batch_size, autocast)
    score = -metrics["loss"] if cfg.metric == "loss" else metrics[cfg.metric]
    record = {"type": "eval", "step": state.step, "epoch": state.epoch, **metrics}
    state.history.append(record)
    _log(info, metrics_log, record)
    if state.best_score is None or score > state.best_score:
        state.best_score, state.best_metrics, state.best_step = score, metrics, state.step
        state.bad_evals = 0
        if info.is_main:
            _save_weights_atomic(model, best_path)
    else:
        state.bad_evals += 1
    barrier(info)
    return cfg.early_stopping_patience > 0 and state.bad_evals >= cfg.early_stopping_patience


def _checkpoint(
    info: DistInfo,
    ckpt_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: _State,
    keep: int,
    ema: WeightAverage | None,
) -> None:
    rng_states = gather_objects(info, torch.get_rng_state())
    if info.is_main:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": rng_states,
            "loop": dict(state.__dict__),
            **({"ema_updates": ema.updates} if ema is not None else {}),
        }
        save_checkpoint(
            ckpt_dir, state.step, model, trainer_state, keep, average=ema.shadow if ema is not None else None
        )
    barrier(info)


def _global_mean(info: DistInfo, local_sum: float, count: int) -> float:
    total = all_reduce_sum(info, torch.tensor([local_sum], dtype=torch.float64))
    return float(total.item()) / count


def _log(info: DistInfo, path: Path, record: dict[str, Any]) -> None:
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line_step = _line_step(line) if line.strip() else None
        if line_step is not None and line_step <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _save_weights_atomic(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
