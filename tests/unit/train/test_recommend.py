"""The recommender trainer: refusing to resume or to run in several processes, and the determinism
that makes a restart enough."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kiln.train
from kiln.config import load_recipe
from kiln.errors import ConfigError
from tests.helpers import ROOT, kiln_cli

RECIPE = ROOT / "recipes" / "recommend.yaml"


@pytest.mark.parametrize("processes", ["1", "2"])
def test_recommender_train_refuses_resume_before_writing(tmp_path: Path, processes: str) -> None:
    out = tmp_path / "run"
    result = kiln_cli("train", str(RECIPE), f"train.output_dir={out}", "--resume", "--nproc-per-node", processes)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: resume: recommender training keeps no checkpoints")
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "launch", [["--nproc-per-node", "2"], ["--nnodes", "2"], ["--nproc-per-node", "2", "--nnodes", "2"]]
)
def test_recommender_train_refuses_several_processes_before_writing(tmp_path: Path, launch: list[str]) -> None:
    out = tmp_path / "run"
    # Without the refusal the workers would train (or wait for a second node) past this timeout.
    result = kiln_cli("train", str(RECIPE), f"train.output_dir={out}", *launch, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "error: --nproc-per-node/--nnodes: recommender training runs in a single process, got "
    )
    assert "without --nproc-per-node and --nnodes" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_recommender_run_refuses_a_torchrun_worker_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe(RECIPE, [f"train.output_dir={out}"])
    with pytest.raises(ConfigError, match="single process, got 2 processes"):
        kiln.train.run(recipe)
    assert not out.exists()


def test_recommender_trained_again_with_the_same_seed_has_the_same_weights(tmp_path: Path) -> None:
    weights = []
    for name in ("first", "again"):
        recipe = load_recipe(RECIPE, ["train.max_steps=4", f"train.output_dir={tmp_path / name}"])
        package = kiln.train.run(recipe).package_dir
        assert package is not None
        weights.append(load_file(str(package / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
