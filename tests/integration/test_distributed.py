"""Data-parallel training with real torchrun processes (gloo on CPU)."""

import json
from pathlib import Path

import pytest

from kiln.config import parse_recipe
from tests.helpers import kiln_cli, package_validation_scores, tiny_image_recipe, tiny_text_recipe, write_recipe

pytestmark = pytest.mark.slow


def test_train_two_processes_matches_one_process_and_package_evaluates(tmp_path: Path) -> None:
    raws = {}
    for name in ("tok", "one", "two"):
        raws[name] = tiny_text_recipe(tmp_path / name, epochs=2)
        raws[name]["model"]["dropout"] = 0.0
    assert kiln_cli("train", str(write_recipe(tmp_path / "tok.yaml", raws["tok"])), "train.max_steps=1").returncode == 0
    for name in ("one", "two"):
        raws[name]["model"]["tokenizer_file"] = str(tmp_path / "tok" / "tokenizer.json")

    one = kiln_cli("train", str(write_recipe(tmp_path / "one.yaml", raws["one"])))
    assert one.returncode == 0, one.stderr
    two = kiln_cli("train", str(write_recipe(tmp_path / "two.yaml", raws["two"])), "--nproc-per-node", "2")
    assert two.returncode == 0, two.stderr

    m1 = json.loads((tmp_path / "one" / "package" / "kiln.json").read_text())
    m2 = json.loads((tmp_path / "two" / "package" / "kiln.json").read_text())
    assert m2["lineage"]["settings"]["world_size"] == 2
    assert m1["lineage"]["settings"]["steps"] == m2["lineage"]["settings"]["steps"]
    # Same seed, same global batches, no dropout: the averaged DDP gradient equals the
    # single-process one up to float summation order, so validation agrees closely.
    assert abs(m1["metrics"]["validation"]["accuracy"] - m2["metrics"]["validation"]["accuracy"]) <= 0.02
    assert abs(m1["metrics"]["validation"]["loss"] - m2["metrics"]["validation"]["loss"]) <= 0.01
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
