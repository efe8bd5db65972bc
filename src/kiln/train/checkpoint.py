"""Resumable checkpoints: written into a staging folder and renamed, so a crash or ``kill -9``
always leaves the last complete checkpoint intact.

Weights (and the weight average, when training keeps one) go to safetensors; optimizer,
scheduler and RNG state go to ``trainer.pt``, read back with ``torch.load(weights_only=True)`` so
that loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.errors import ConfigError
from kiln.runtime.weights import state_tensors

_STEP_DIR = re.compile(r"^step-(\d{8})$")
AVERAGE_FILE = "average.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path
    step: int


def save_checkpoint(
    folder: Path,
    step: int,
    model: nn.Module,
    trainer_state: dict[str, Any],
    keep: int,
    *,
    average: nn.Module | None = None,
) -> Checkpoint:
    """Write ``step-NNNNNNNN`` under ``folder`` atomically and keep only the newest ``keep``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=folder))
    try:
        save_file(state_tensors(model), str(staging / "model.safetensors"))
        if average is not None:
            save_file(state_tensors(average), str(staging / AVERAGE_FILE))
        torch.save(trainer_state, staging / "trainer.pt")
        _fsync_dir(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints under ``folder``, oldest first (staging leftovers are ignored)."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "trainer.pt").is_file() and (child / "model.safetensors").is_file():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint, if any."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(ckpt: Checkpoint, model: nn.Module, *, average: nn.Module | None = None) -> dict[str, Any]:
    """Load weights into ``model`` (and the weight average into ``average``); return the trainer state."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(ckpt.path / "model.safetensors")))
    if average is not None:
        if not (ckpt.path / AVERAGE_FILE).is_file():
            raise ConfigError(
                f"{ckpt.path}: this checkpoint holds no weight average, so it cannot resume a run with "
                "train.ema_decay set; resume with the run's own settings or start again without --resume"
            )
        average.load_state_dict(load_file(str(ckpt.path / AVERAGE_FILE)))
    elif (ckpt.path / AVERAGE_FILE).is_file():
        raise ConfigError(
            f"{ckpt.path}: this checkpoint was written with train.ema_decay set and its run evaluated and "
            "kept the weight average; resume with the run's own train.ema_decay or start again without --resume"
        )
    return torch.load(ckpt.path / "trainer.pt", weights_only=True)


def remove_stale(folder: Path) -> None:
    """Delete staging folders that a killed run left behind."""
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.endswith(".partial"):
                shutil.rmtree(child, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
