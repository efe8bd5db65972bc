"""Data-parallel training with real torchrun processes (gloo on CPU): two processes against one,
a two-process run killed and resumed, and two nodes on one machine against one node."""

import contextlib
import json
import os
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
    free_port,
    kiln_argv,
    kiln_cli,
    last_checkpoint_step,
    log_lines_up_to,
    package_validation_scores,
    tiny_image_recipe,
    tiny_text_recipe,
    train_losses,
    write_recipe,
)

pytestmark = pytest.mark.slow

# Same seed, same global batches, no dropout: the averaged DDP gradient equals the single-process
# one up to float summation order, so losses agree to float32 rounding (measured: 1.2e-7 at most).
FLOAT_ROUNDING = 1e-6


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    train_run(parse_recipe(tiny_text_recipe(folder, max_steps=1)))
    return folder / "tokenizer.json"


def _text_recipe(tmp_path: Path, name: str, tokenizer: Path, *, dropout: float) -> Path:
    """28 steps (2 epochs of 14), a checkpoint every 5, every loss logged; one tokenizer for all runs."""
    raw = tiny_text_recipe(tmp_path / name, epochs=2, checkpoint_every_steps=5, log_every_steps=1)
    raw["model"]["dropout"] = dropout
    raw["model"]["tokenizer_file"] = str(tokenizer)
    return write_recipe(tmp_path / f"{name}.yaml", raw)


@pytest.fixture(scope="module")
def two_processes_with_dropout(tmp_path_factory: pytest.TempPathFactory, tokenizer: Path) -> Path:
    """An uninterrupted two-process run with dropout: each rank draws its own masks from its own RNG."""
    folder = tmp_path_factory.mktemp("reference")
    result = kiln_cli("train", str(_text_recipe(folder, "run", tokenizer, dropout=0.1)), "--nproc-per-node", "2")
    assert result.returncode == 0, result.stderr
    return folder / "run"


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "package" / "kiln.json").read_text())


def _eval_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "eval"]


def _assert_same_weights(run_dir: Path, reference: Path) -> None:
    expected = load_file(str(reference / "package" / "model.safetensors"))
    actual = load_file(str(run_dir / "package" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_train_two_processes_matches_one_process_and_package_evaluates(tmp_path: Path, tokenizer: Path) -> None:
    one = kiln_cli("train", str(_text_recipe(tmp_path, "one", tokenizer, dropout=0.0)))
    assert one.returncode == 0, one.stderr
    two = kiln_cli("train", str(_text_recipe(tmp_path, "two", tokenizer, dropout=0.0)), "--nproc-per-node", "2")
    assert two.returncode == 0, two.stderr

    m1, m2 = _manifest(tmp_path / "one"), _manifest(tmp_path / "two")
    assert m2["lineage"]["settings"]["world_size"] == 2
    assert m1["lineage"]["settings"]["steps"] == m2["lineage"]["settings"]["steps"] == 28
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), abs=FLOAT_ROUNDING)
    assert _eval_losses(tmp_path / "two") == pytest.approx(_eval_losses(tmp_path / "one"), abs=FLOAT_ROUNDING)
    assert m2["metrics"]["validation"] == pytest.approx(m1["metrics"]["validation"], abs=FLOAT_ROUNDING)
    # only rank 0 wrote: exactly one package, no stray per-rank outputs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "best",
        "checkpoints",
        "metrics.jsonl",
        "package",
        "tokenizer.json",
    ]

    evaluated = kiln_cli("eval", str(tmp_path / "two" / "package"), "--json", "--output-dir", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["n"] > 0 and 0.0 <= report["accuracy"] <= 1.0
    assert report["data_fingerprint_matches"] is True


def _process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (torchrun starts its workers in new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def test_two_processes_killed_then_resumed_equal_an_uninterrupted_run(
    tmp_path: Path, tokenizer: Path, two_processes_with_dropout: Path
) -> None:
    recipe = _text_recipe(tmp_path, "run", tokenizer, dropout=0.1)
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(kiln_argv("train", str(recipe), "--nproc-per-node", "2"))
    target = run_dir / "checkpoints" / "step-00000010"
    deadline = time.monotonic() + 300
    while not target.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job = _process_tree(launcher.pid)
    assert launcher.poll() is None, "training finished before it could be interrupted"
    assert len(job) >= 4, job  # kiln, torchrun and its two workers
    # The whole job dies at once, as when its machine loses power: launcher, torchrun and workers.
    for pid in job:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert launcher.wait() != 0
    assert not (run_dir / "package").exists()
    checkpoint_step = last_checkpoint_step(run_dir)
    assert 10 <= checkpoint_step < 28
    logged = log_lines_up_to(run_dir, checkpoint_step)

    resumed = kiln_cli("train", str(recipe), "--nproc-per-node", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # It continued from the checkpoint: the log up to it is kept as written, the rest redone.
    assert log_lines_up_to(run_dir, 28)[: len(logged)] == logged
    _assert_same_weights(run_dir, two_processes_with_dropout)
    # Every step logged exactly once, with the losses of the uninterrupted run.
    assert train_losses(run_dir) == train_losses(two_processes_with_dropout)
    assert _manifest(run_dir)["metrics"] == _manifest(two_processes_with_dropout)["metrics"]


def test_two_nodes_on_one_machine_equal_one_node_with_two_processes(
    tmp_path: Path, tokenizer: Path, two_processes_with_dropout: Path
) -> None:
    recipe = _text_recipe(tmp_path, "run", tokenizer, dropout=0.1)
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            kiln_argv("train", str(recipe), "--nnodes", "2", "--node-rank", str(rank))
            + ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr

    manifest = _manifest(tmp_path / "run")
    assert manifest["lineage"]["settings"]["world_size"] == 2
    # Ranks 0 and 1 on two nodes see the same shards and draw the same dropout as on one node.
    _assert_same_weights(tmp_path / "run", two_processes_with_dropout)
    assert manifest["metrics"] == _manifest(two_processes_with_dropout)["metrics"]


def test_two_processes_with_weight_average_and_batch_norm_score_the_packaged_model(tmp_path: Path) -> None:
    # Each rank updates batch norm statistics on its own shard; the weight average takes rank 0's,
    # as DDP does, so every rank evaluates the same model and the package is the model scored.
    raw = tiny_image_recipe(tmp_path / "run", epochs=2, ema_decay=0.9, eval_every_steps=10)
    result = kiln_cli("train", str(write_recipe(tmp_path / "digits.yaml", raw)), "--nproc-per-node", "2")
    assert result.returncode == 0, result.stderr

    recipe = parse_recipe(raw)
    manifest = json.loads((tmp_path / "run" / "package" / "kiln.json").read_text())
    assert manifest["lineage"]["settings"]["world_size"] == 2
    _, loss = package_validation_scores(tmp_path / "run" / "package", recipe)
    assert manifest["metrics"]["validation"]["loss"] == pytest.approx(loss, abs=1e-5)
