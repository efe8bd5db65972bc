"""Kill training with SIGKILL mid-run, resume it, and get the weights of an uninterrupted run."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kiln.config import parse_recipe
from kiln.train import run as train_run
from tests.helpers import (
    kiln_argv,
    kiln_cli,
    last_checkpoint_step,
    log_lines_up_to,
    tiny_text_recipe,
    write_recipe,
)

pytestmark = pytest.mark.slow


def _recipe(run_dir: Path, tokenizer: Path) -> dict:
    raw = tiny_text_recipe(run_dir, epochs=4, checkpoint_every_steps=3, keep_checkpoints=2, log_every_steps=1)
    raw["model"]["tokenizer_file"] = str(tokenizer)
    return raw


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_train_killed_then_resumed_equals_uninterrupted(tmp_path: Path, sig: signal.Signals) -> None:
    train_run(parse_recipe(tiny_text_recipe(tmp_path / "tok", max_steps=1)))
    tokenizer = tmp_path / "tok" / "tokenizer.json"

    reference = train_run(parse_recipe(_recipe(tmp_path / "reference", tokenizer)))

    run_dir = tmp_path / "interrupted"
    recipe_path = write_recipe(tmp_path / "recipe.yaml", _recipe(run_dir, tokenizer))
    # A shell that starts jobs in the background ignores SIGINT, and children inherit that;
    # restore the default so that Ctrl-C reaches training as it does in a terminal.
    proc = subprocess.Popen(
        kiln_argv("train", str(recipe_path)),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    target = run_dir / "checkpoints" / "step-00000009"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    assert proc.wait() != 0
    assert not (run_dir / "package").exists()
    assert not list((run_dir / "checkpoints").glob(".*partial")) or sig == signal.SIGKILL

    checkpoint_step = last_checkpoint_step(run_dir)
    logged = log_lines_up_to(run_dir, checkpoint_step)

    resumed = kiln_cli("train", str(recipe_path), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # It continued from the checkpoint: the log up to it is kept as written, the rest redone.
    assert checkpoint_step >= 9
    assert log_lines_up_to(run_dir, reference.steps)[: len(logged)] == logged
    assert (run_dir / "package" / "kiln.json").is_file()

    expected = load_file(str(reference.package_dir / "model.safetensors"))
    actual = load_file(str(run_dir / "package" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-5)
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"type": "train"' in line]
    assert len(steps) == reference.steps  # no step logged twice after resuming


def test_train_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    recipe_path = write_recipe(tmp_path / "r.yaml", tiny_text_recipe(tmp_path / "run", max_steps=2))
    result = kiln_cli("train", str(recipe_path), "--resume")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "package" / "kiln.json").is_file()
