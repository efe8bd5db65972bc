"""A language model trained by two torchrun processes reaches the validation loss of one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import kiln_cli, write_recipe
from tests.language import tiny_gpt_recipe, write_corpus

pytestmark = pytest.mark.slow


def test_lm_two_processes_reach_the_validation_loss_of_one(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    losses = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run-{processes}"
        raw = tiny_gpt_recipe(run_dir, corpus, max_steps=6, log_every_steps=1)
        done = kiln_cli(
            "train", str(write_recipe(tmp_path / f"{processes}.yaml", raw)), "--nproc-per-node", str(processes)
        )
        assert done.returncode == 0, done.stderr
        manifest = json.loads((run_dir / "package" / "kiln.json").read_text())
        assert manifest["lineage"]["settings"]["world_size"] == processes
        losses[processes] = manifest["metrics"]["validation"]["loss"]
    # Dropout off, same global batches, the loss averaged over the global batch's tokens on
    # every rank: the runs differ only in float summation order.
    assert losses[2] == pytest.approx(losses[1], abs=1e-4)
