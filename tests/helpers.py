"""Small recipes and subprocess helpers shared by the training and CLI tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kiln.registry import Role

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_text_recipe(run_dir: Path, **train: Any) -> dict[str, Any]:
    """A fast text recipe: a tiny BERT trained from scratch on 300 Rotten Tomatoes snippets."""
    return {
        "name": "tiny-text",
        "seed": 7,
        "data": {"dataset": "rotten_tomatoes", "max_examples": 300},
        "model": {"kind": "bert", "size": "tiny", "vocab_size": 400, "max_length": 32},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "lr": 1e-3,
            "num_threads": 1,
            "progress": False,
            "output_dir": str(run_dir),
            **train,
        },
    }


def tiny_image_recipe(run_dir: Path, **train: Any) -> dict[str, Any]:
    """A fast image recipe: a small CNN on scikit-learn's 8x8 digits."""
    return {
        "name": "tiny-digits",
        "seed": 3,
        "data": {"dataset": "digits"},
        "model": {"kind": "cnn", "cnn": {"channels": [8, 16], "hidden_size": 32, "dropout": 0.1}},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "lr": 3e-3,
            "num_threads": 1,
            "progress": False,
            "output_dir": str(run_dir),
            **train,
        },
    }


def train_losses(run_dir: Path) -> list[float]:
    """The training losses a run logged to ``metrics.jsonl``, in step order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def log_lines_up_to(run_dir: Path, step: int) -> list[str]:
    """The lines of a run's ``metrics.jsonl`` logged at ``step`` or before, as written."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["step"] <= step]


def last_checkpoint_step(run_dir: Path) -> int:
    """The step of the newest ``checkpoints/step-*`` folder of a run."""
    return max(int(p.name.removeprefix("step-")) for p in (run_dir / "checkpoints").glob("step-*"))


def package_validation_scores(package: Path, recipe: Any) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a package on its recipe's validation split, via kiln.runtime."""
    import numpy as np

    import kiln.data
    import kiln.runtime

    validation = kiln.data.run(recipe).validation
    probs = kiln.runtime.load(package).predict_proba(validation.inputs)
    labels = np.asarray(validation.labels)
    return float((probs.argmax(1) == labels).mean()), float(-np.log(probs[np.arange(len(labels)), labels]).mean())


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def api_token(user: str, role: Role) -> str:
    """A new API token for a new user with ``role`` in the registry at KILN_HOME."""
    from kiln.registry import Registry

    with Registry() as registry:
        registry.store.create_user(user, role)
        return registry.store.create_token(user)[1]


def kiln_argv(*args: str) -> list[str]:
    """The command line of the real ``kiln`` command, run by this Python."""
    return [sys.executable, "-m", "kiln.cli.main", *args]


def kiln_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``kiln`` command in a subprocess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        kiln_argv(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )
