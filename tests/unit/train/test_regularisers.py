"""R-Drop and weight averaging in the training loop, seen through the run folder and the package."""

import json
import shutil
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import kiln.data
import kiln.runtime
import kiln.train
from kiln.config import parse_recipe
from kiln.config.schema import TrainConfig
from kiln.errors import ConfigError
from kiln.train.ema import WeightAverage
from kiln.train.loop import _training_loss
from tests.helpers import (
    ROOT,
    kiln_cli,
    package_validation_scores,
    tiny_image_recipe,
    tiny_text_recipe,
    train_losses,
)


def _first_loss(run_dir: Path, **train: object) -> float:
    kiln.train.run(parse_recipe(tiny_image_recipe(run_dir, max_steps=1, log_every_steps=1, **train)))
    return train_losses(run_dir)[0]


def test_rdrop_adds_alpha_times_the_divergence_of_two_dropout_passes(tmp_path: Path) -> None:
    # The first step draws the same two dropout masks whatever alpha is, so the logged loss is
    # CE + alpha * KL with fixed CE and KL: linear in alpha, and above CE since KL > 0.
    losses = [_first_loss(tmp_path / f"a{alpha}", rdrop_alpha=alpha) for alpha in (1.0, 2.0, 3.0)]
    divergence = losses[1] - losses[0]
    assert divergence > 1e-4
    assert losses[2] - losses[1] == pytest.approx(divergence, rel=1e-3)


def test_rdrop_without_dropout_adds_nothing_to_the_loss(tmp_path: Path) -> None:
    # With dropout off both passes agree exactly: the divergence is zero and the mean of two equal
    # cross-entropies is the cross-entropy. (Only the first step is compared: Adam's first update
    # is lr * sign(gradient), so float noise in near-zero gradients of a batch twice the size
    # moves later steps apart. A text model, because batch norm would see the doubled batch; one
    # tokenizer for both runs, because WordPiece training is not bit-for-bit repeatable.)
    tokenizer = _tokenizer(tmp_path)

    def first(name: str, **train: object) -> float:
        raw = tiny_text_recipe(tmp_path / name, max_steps=1, log_every_steps=1, **train)
        raw["model"].update(dropout=0.0, tokenizer_file=str(tokenizer))
        kiln.train.run(parse_recipe(raw))
        return train_losses(tmp_path / name)[0]

    assert first("rdrop", rdrop_alpha=4.0) == pytest.approx(first("plain"), abs=1e-6)


def test_rdrop_gradient_is_that_of_cross_entropy_plus_alpha_times_symmetric_kl() -> None:
    # The loop's objective against one written out here, on the same two dropout draws: equal
    # gradients, and different from alpha = 0 (so the divergence really trains the model).
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    features = {"x": torch.randn(8, 6, generator=torch.Generator().manual_seed(0))}
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def gradient(loss_of: object) -> torch.Tensor:
        net.zero_grad()
        torch.manual_seed(5)
        loss_of().backward()  # type: ignore[operator]
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    def by_hand(alpha: float) -> torch.Tensor:
        logits = net(torch.cat([features["x"], features["x"]]))
        p, q = logits.chunk(2)
        ce = 0.5 * (F.cross_entropy(p, target, reduction="sum") + F.cross_entropy(q, target, reduction="sum"))
        lp, lq = p.log_softmax(-1), q.log_softmax(-1)
        kl = 0.5 * ((lp.exp() * (lp - lq)).sum() + (lq.exp() * (lq - lp)).sum())
        return ce + alpha * kl

    plain_autocast = torch.autocast("cpu", enabled=False)
    with patch("kiln.train.loop.logits_of", lambda model, feats: model(feats["x"])):
        loop_grad = gradient(
            lambda: _training_loss(net, features, target, TrainConfig(rdrop_alpha=2.0), plain_autocast)
        )
        no_kl_grad = gradient(
            lambda: _training_loss(net, features, target, TrainConfig(rdrop_alpha=1e-9), plain_autocast)
        )
    torch.testing.assert_close(loop_grad, gradient(lambda: by_hand(2.0)), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(loop_grad, no_kl_grad, atol=1e-4)


def test_weight_average_ramps_its_decay_and_copies_integer_buffers() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    model.register_buffer("steps", torch.tensor([0]))
    average = WeightAverage(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.steps += 7
    average.update(model)  # decay min(0.5, 1/10): 0.1 of the old weights, 0.9 of the new
    torch.testing.assert_close(average.shadow.weight, start + 0.9)
    assert average.shadow.steps.item() == 7
    for _ in range(20):
        average.update(model)
    assert average.current_decay() == 0.5
    torch.testing.assert_close(average.shadow.weight, start + 1.0, atol=1e-5, rtol=0)
    assert not average.shadow.weight.requires_grad


def _tokenizer(tmp_path: Path) -> Path:
    kiln.train.run(parse_recipe(tiny_text_recipe(tmp_path / "tok", max_steps=1)))
    return tmp_path / "tok" / "tokenizer.json"


def _ema_recipe(run_dir: Path, tokenizer: Path, **train: object) -> dict:
    settings: dict[str, object] = {"epochs": 1, **train}
    raw = tiny_text_recipe(
        run_dir, ema_decay=0.9, checkpoint_every_steps=3, keep_checkpoints=40, log_every_steps=1, **settings
    )
    raw["model"]["tokenizer_file"] = str(tokenizer)
    return raw


def test_ema_evaluates_keeps_and_packages_the_best_average(tmp_path: Path) -> None:
    # An evaluation every 3 steps, each with its checkpoint: the package is the average at the
    # best evaluation, and its recorded validation metrics are those of the packaged weights.
    run_dir = tmp_path / "run"
    recipe = parse_recipe(_ema_recipe(run_dir, _tokenizer(tmp_path), epochs=2, eval_every_steps=3))
    kiln.train.run(recipe)
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "eval"]
    assert len(evals) >= 5
    best = next(r for r in evals if r["accuracy"] == max(e["accuracy"] for e in evals))
    packaged = load_file(str(run_dir / "package" / "model.safetensors"))
    averaged = load_file(str(run_dir / "checkpoints" / f"step-{best['step']:08d}" / "average.safetensors"))
    raw = load_file(str(run_dir / "checkpoints" / f"step-{best['step']:08d}" / "model.safetensors"))
    assert packaged.keys() == averaged.keys()
    for name, tensor in packaged.items():
        torch.testing.assert_close(tensor, averaged[name])
    assert any(not torch.allclose(raw[n], averaged[n]) for n in raw if raw[n].is_floating_point())

    manifest = json.loads((run_dir / "package" / "kiln.json").read_text())
    accuracy, loss = package_validation_scores(run_dir / "package", recipe)
    assert manifest["metrics"]["validation"]["accuracy"] == pytest.approx(accuracy)
    assert manifest["metrics"]["validation"]["loss"] == pytest.approx(loss, abs=1e-4)


def test_ema_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    # Train to the end, then roll the run folder back to its first checkpoint and resume: the
    # average and its update count come back from the checkpoint, so the package is the same.
    tokenizer = _tokenizer(tmp_path)
    full = tmp_path / "full"
    kiln.train.run(parse_recipe(_ema_recipe(full, tokenizer)))
    rolled = tmp_path / "rolled"
    shutil.copytree(full, rolled)
    checkpoints = sorted((rolled / "checkpoints").iterdir())
    assert len(checkpoints) >= 3
    for later in checkpoints[1:]:
        shutil.rmtree(later)
    shutil.rmtree(rolled / "package")
    kiln.train.run(parse_recipe(_ema_recipe(rolled, tokenizer)), resume=True)
    expected = load_file(str(full / "package" / "model.safetensors"))
    resumed = load_file(str(rolled / "package" / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=1e-5)


def test_resuming_with_a_different_ema_setting_is_refused(tmp_path: Path) -> None:
    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    kiln.train.run(parse_recipe(tiny_image_recipe(plain, max_steps=3, checkpoint_every_steps=2)))
    kiln.train.run(parse_recipe(tiny_image_recipe(averaged, max_steps=3, checkpoint_every_steps=2, ema_decay=0.9)))
    with pytest.raises(ConfigError, match="no weight average"):
        kiln.train.run(parse_recipe(tiny_image_recipe(plain, max_steps=3, ema_decay=0.9)), resume=True)
    with pytest.raises(ConfigError, match="written with train.ema_decay set"):
        kiln.train.run(parse_recipe(tiny_image_recipe(averaged, max_steps=3)), resume=True)


def test_recommender_refuses_classifier_training_settings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kiln_cli(
        "train",
        str(ROOT / "recipes" / "recommend.yaml"),
        "train.ema_decay=0.99",
        "train.rdrop_alpha=1",
        f"train.output_dir={out}",
    )
    assert result.returncode == 2
    assert "train.rdrop_alpha, train.ema_decay" in result.stderr
    assert not out.exists()
