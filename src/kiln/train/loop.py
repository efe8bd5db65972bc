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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiln.config.schema import TrainConfig
from kiln.data.order import epoch_order
from kiln.errors import ConfigError
from kiln.progress import progress_bar
from kiln.runtime.architectures import logits_of
from kiln.train.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    remove_stale,
    save_checkpoint,
)
from kiln.train.distributed import DistInfo, all_reduce_sum, barrier, broadcast_from_main, gather_objects
from kiln.train.ema import WeightAverage
from kiln.train.evaluation import Evaluation, evaluate, language_model_loss, save_weights_atomic
from kiln.train.features import Features
from kiln.train.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


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
class _Progress:
    """Where training stands; saved in every checkpoint under ``loop`` and restored on resume."""

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

    def advance(self, samples: int, step_s: float, batches_per_epoch: int) -> bool:
        """Count a finished step; return whether it ended an epoch (the next step starts the next one)."""
        self.step += 1
        self.batch_in_epoch += 1
        self.samples_seen += samples
        self.train_wall_s += step_s
        if self.batch_in_epoch < batches_per_epoch:
            return False
        self.epoch += 1
        self.batch_in_epoch = 0
        return True


@dataclass(frozen=True)
class _Schedule:
    """How long the run is, fixed by the data size, the settings and the number of processes."""

    batches_per_epoch: int
    total_steps: int


@dataclass(frozen=True)
class _Parts:
    """What a training step changes and what it reads, fixed for the whole run."""

    model: nn.Module
    net: nn.Module  # the model, wrapped in DDP when there are several processes
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: WeightAverage | None
    features: Features
    labels: np.ndarray | None  # None for a language model: its targets are its own next tokens
    autocast: Any
    cfg: TrainConfig
    seed: int
    info: DistInfo


def fit(
    model: nn.Module,
    *,
    train: Features,
    train_labels: np.ndarray | None,
    validation: Features,
    validation_labels: np.ndarray | None,
    num_labels: int,
    cfg: TrainConfig,
    seed: int,
    info: DistInfo,
    run_dir: Path,
    resume: bool,
    eval_batch_size: int,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best weights seen on validation.

    Without labels (``train_labels`` None) the model is a causal language model: each batch
    carries its ``labels`` (next-token targets, -100 where no loss is taken) and the loss is the
    mean over every target token of the global batch.
    """
    schedule = _schedule(len(train), cfg, info.world_size)
    parts = _set_up(model, train, train_labels, cfg=cfg, seed=seed, info=info, total_steps=schedule.total_steps)
    evaluation = Evaluation(
        scored=parts.ema.shadow if parts.ema is not None else model,
        net=parts.ema.shadow if parts.ema is not None else parts.net,
        features=validation,
        labels=validation_labels,
        num_labels=num_labels,
        batch_size=eval_batch_size,
        autocast=parts.autocast,
        best_path=run_dir / "best" / "model.safetensors",
        metrics_log=run_dir / "metrics.jsonl",
    )
    ckpt_dir = run_dir / "checkpoints"
    progress = _start(parts, ckpt_dir, evaluation, resume=resume)
    batches = _Batches(
        size=len(train),
        batch_size=cfg.batch_size,
        seed=seed,
        lengths=train.lengths() if cfg.group_by_length and hasattr(train, "lengths") else None,
    )

    loop_started = time.perf_counter()
    is_done = _is_done(progress, schedule, cfg)
    show_bar = cfg.progress and info.is_main
    with progress_bar(schedule.total_steps, "train", enabled=show_bar, completed=progress.step) as bar:
        while not is_done:
            epoch, batch = progress.epoch, progress.batch_in_epoch
            global_index = batches.at(epoch, batch)
            started = time.perf_counter()
            targets = _target_count(train, global_index, parts.labels)
            step_loss = _train_step(parts, global_index, epoch, batch, targets)
            step_s = time.perf_counter() - started
            is_epoch_end = progress.advance(len(global_index), step_s, schedule.batches_per_epoch)

            if progress.step % cfg.log_every_steps == 0 or progress.step == schedule.total_steps:
                loss = _global_mean(info, step_loss, targets)
                speed = len(global_index) / step_s if step_s > 0 else 0.0
                tokens = {} if parts.labels is not None else {"tokens_per_s": targets / step_s if step_s > 0 else 0.0}
                record = {
                    "type": "train",
                    "step": progress.step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": parts.scheduler.get_last_lr()[0],
                    "samples_per_s": speed,
                    **tokens,
                    # Wall time since this process entered the loop: steps, logging, progress,
                    # evaluations and checkpoints all included.
                    "elapsed_s": time.perf_counter() - loop_started,
                }
                _log(info, evaluation.metrics_log, record)
                bar.update(0, loss=f"{loss:.4f}", speed=f"{speed:.0f}")
            bar.update(1)

            is_eval_step = cfg.eval_every_steps is not None and progress.step % cfg.eval_every_steps == 0
            if is_epoch_end or is_eval_step or progress.step >= schedule.total_steps:
                _evaluate_and_track(evaluation, progress, cfg, info)

            is_done = _is_done(progress, schedule, cfg)
            if is_done or is_epoch_end or progress.step % cfg.checkpoint_every_steps == 0:
                _checkpoint(parts, ckpt_dir, progress)

    if evaluation.best_path.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(evaluation.best_path)))
    return FitResult(
        best_metrics=progress.best_metrics,
        best_step=progress.best_step,
        steps=progress.step,
        stopped_early=_is_patience_spent(progress, cfg),
        train_wall_s=progress.train_wall_s,
        samples_per_s=progress.samples_seen / progress.train_wall_s if progress.train_wall_s else 0.0,
        history=progress.history,
    )


def _set_up(
    model: nn.Module,
    train: Features,
    train_labels: np.ndarray | None,
    *,
    cfg: TrainConfig,
    seed: int,
    info: DistInfo,
    total_steps: int,
) -> _Parts:
    """Move the model to its device; build the optimizer, schedule, weight average and DDP wrapper."""
    model.to(info.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    # The average copies the bare model, before DDP wraps it.
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    net = nn.parallel.DistributedDataParallel(model) if info.is_distributed else model
    return _Parts(
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        features=train,
        labels=train_labels,
        autocast=torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"),
        cfg=cfg,
        seed=seed,
        info=info,
    )


def _schedule(size: int, cfg: TrainConfig, world_size: int) -> _Schedule:
    """Batches per epoch (a last partial batch counts when every process gets a micro-batch) and total steps."""
    per_step = world_size * cfg.grad_accum_steps
    if cfg.batch_size < per_step:
        raise ConfigError(
            f"train.batch_size must be >= processes x grad_accum_steps = {per_step}, got {cfg.batch_size}"
        )
    full, rest = divmod(size, cfg.batch_size)
    batches_per_epoch = full + (1 if rest >= per_step else 0)
    total_steps = batches_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    return _Schedule(batches_per_epoch=batches_per_epoch, total_steps=total_steps)


def _is_done(progress: _Progress, schedule: _Schedule, cfg: TrainConfig) -> bool:
    """The one place that decides training stops: out of steps, or out of patience."""
    return progress.step >= schedule.total_steps or _is_patience_spent(progress, cfg)


def _is_patience_spent(progress: _Progress, cfg: TrainConfig) -> bool:
    return cfg.early_stopping_patience > 0 and progress.bad_evals >= cfg.early_stopping_patience


@dataclass
class _Batches:
    """Global batches: the order of an epoch is a pure function of (seed, epoch); the current one is kept."""

    size: int
    batch_size: int
    seed: int
    lengths: np.ndarray | None
    _epoch: int = -1
    _order: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def at(self, epoch: int, batch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = epoch_order(self.size, self.seed, epoch, lengths=self.lengths, batch_size=self.batch_size)
            self._epoch = epoch
        return self._order[batch * self.batch_size : (batch + 1) * self.batch_size]


def _start(parts: _Parts, ckpt_dir: Path, evaluation: Evaluation, *, resume: bool) -> _Progress:
    """Progress restored from the latest checkpoint when resuming; otherwise fresh, with old outputs removed."""
    info = parts.info
    if info.is_main:
        remove_stale(ckpt_dir)
    barrier(info)
    ckpt = latest_checkpoint(ckpt_dir) if resume else None
    if ckpt is not None:
        progress = _restore(parts, ckpt)
        if info.is_main:
            _truncate_log(evaluation.metrics_log, progress.step)
            logger.info("resumed from %s (step %d)", ckpt.path, progress.step)
    else:
        progress = _Progress()
        if info.is_main:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            for old in (evaluation.metrics_log, evaluation.best_path):
                old.unlink(missing_ok=True)
    barrier(info)
    return progress


def _restore(parts: _Parts, ckpt: Checkpoint) -> _Progress:
    """Load weights, optimizer, schedule and this rank's RNG state from ``ckpt``; return its progress."""
    ema = parts.ema
    trainer_state = load_checkpoint(ckpt, parts.model, average=ema.shadow if ema is not None else None)
    if ema is not None:
        ema.updates = int(trainer_state.get("ema_updates", 0))
    parts.optimizer.load_state_dict(trainer_state["optimizer"])
    parts.scheduler.load_state_dict(trainer_state["scheduler"])
    rng_states = trainer_state["torch_rng"]
    torch.set_rng_state(rng_states[min(parts.info.rank, len(rng_states) - 1)])
    return _Progress(**trainer_state["loop"])


def _target_count(features: Features, global_index: np.ndarray, labels: np.ndarray | None) -> int:
    """How many targets a global batch holds: its examples, or a language model's target tokens."""
    if labels is not None:
        return len(global_index)
    return int(features.targets(global_index))  # type: ignore[attr-defined]


def _train_step(parts: _Parts, global_index: np.ndarray, epoch: int, batch: int, targets: int) -> float:
    """One optimizer step on a global batch; return the summed loss of this rank's share of it.

    Each rank takes a strided shard of the global batch, split into ``grad_accum_steps``
    micro-batches; gradients synchronise only on the last one. Each micro-batch's summed loss is
    scaled by ``world_size / targets`` so that the averaged gradient is that of the mean over all
    ``targets`` of the global batch.
    """
    cfg, info, net = parts.cfg, parts.info, parts.net
    net.train()
    parts.optimizer.zero_grad(set_to_none=True)
    # Summed on the device and read once at the end: reading each micro-batch's loss would make
    # the host wait for the device before it prepares the next micro-batch.
    step_loss = torch.zeros((), dtype=torch.float64, device=info.device)
    shards = np.array_split(global_index[info.rank :: info.world_size], cfg.grad_accum_steps)
    for k, micro in enumerate(shards):
        is_last = k == cfg.grad_accum_steps - 1
        sync = (
            net.no_sync()
            if isinstance(net, nn.parallel.DistributedDataParallel) and not is_last
            else contextlib.nullcontext()
        )
        with sync:
            rng = np.random.default_rng([parts.seed, epoch, batch, k, info.rank])
            features = {key: t.to(info.device) for key, t in parts.features.batch(micro, rng).items()}
            if parts.labels is None:
                loss = language_model_loss(net, features, parts.autocast, cfg.label_smoothing)
            else:
                target = torch.from_numpy(parts.labels[micro]).to(info.device)
                loss = _training_loss(net, features, target, cfg, parts.autocast)
            (loss * (info.world_size / targets)).backward()
        step_loss += loss.detach().double()
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.max_grad_norm)
    parts.optimizer.step()
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(parts.model)
        # Buffers such as batch norm's running statistics are updated by each rank's own shard;
        # DDP runs every forward with rank 0's, so the average takes those.
        broadcast_from_main(info, parts.ema.float_buffers())
    return float(step_loss.item())


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


def _evaluate_and_track(evaluation: Evaluation, progress: _Progress, cfg: TrainConfig, info: DistInfo) -> None:
    """Evaluate on validation, log it, keep the weights when they score best, and count bad evaluations."""
    metrics = evaluate(evaluation, info)
    score = -metrics["loss"] if cfg.metric == "loss" else metrics[cfg.metric]
    record = {"type": "eval", "step": progress.step, "epoch": progress.epoch, **metrics}
    progress.history.append(record)
    _log(info, evaluation.metrics_log, record)
    if progress.best_score is None or score > progress.best_score:
        progress.best_score, progress.best_metrics, progress.best_step = score, metrics, progress.step
        progress.bad_evals = 0
        if info.is_main:
            save_weights_atomic(evaluation.scored, evaluation.best_path)
    else:
        progress.bad_evals += 1
    barrier(info)


def _checkpoint(parts: _Parts, ckpt_dir: Path, progress: _Progress) -> None:
    """Rank 0 writes weights, optimizer, schedule, progress and every rank's RNG state."""
    info, ema = parts.info, parts.ema
    rng_states = gather_objects(info, torch.get_rng_state())
    if info.is_main:
        trainer_state = {
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "torch_rng": rng_states,
            "loop": dict(progress.__dict__),
            **({"ema_updates": ema.updates} if ema is not None else {}),
        }
        save_checkpoint(
            ckpt_dir,
            progress.step,
            parts.model,
            trainer_state,
            parts.cfg.keep_checkpoints,
            average=ema.shadow if ema is not None else None,
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
