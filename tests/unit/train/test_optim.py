from pathlib import Path

import pytest

import kiln.train
from kiln.config import parse_recipe
from kiln.config.schema import TrainConfig
from kiln.errors import ConfigError
from kiln.runtime.architectures import bert_config, build_text_classifier
from kiln.train.optim import build_optimizer
from tests.helpers import tiny_image_recipe, train_losses


def _lr_by_name(decay: float) -> dict[str, tuple[float, float]]:
    """(learning rate, weight decay) of every parameter of a 4-layer BERT."""
    config = bert_config(size="mini", vocab_size=100, num_labels=3, max_length=32, dropout=None)
    model = build_text_classifier(config)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.01, layer_lr_decay=decay))
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    named = {name: by_param[id(p)] for name, p in model.named_parameters()}
    assert len(named) == len(list(model.parameters()))
    return named


def test_layer_lr_decay_scales_each_layer_below_the_top() -> None:
    lrs = _lr_by_name(0.5)
    layers = 1 + max(int(n.split("encoder.layer.")[1].split(".")[0]) for n in lrs if "encoder.layer." in n)
    for name, (lr, wd) in lrs.items():
        if "encoder.layer." in name:
            index = int(name.split("encoder.layer.")[1].split(".")[0])
            expected = 1e-3 * 0.5 ** (layers - 1 - index)
        elif ".embeddings." in name:
            expected = 1e-3 * 0.5**layers
        else:  # pooler and classifier head
            expected = 1e-3
        assert lr == pytest.approx(expected), name
        assert wd == (0.01 if not name.endswith("bias") and "LayerNorm" not in name else 0.0), name


def test_without_layer_lr_decay_every_parameter_trains_at_lr() -> None:
    assert {lr for lr, _ in _lr_by_name(1.0).values()} == {1e-3}


def test_layer_lr_decay_on_a_model_without_encoder_layers_is_refused(tmp_path: Path) -> None:
    recipe = parse_recipe(tiny_image_recipe(tmp_path / "run", max_steps=1, layer_lr_decay=0.9))
    with pytest.raises(ConfigError, match="train.layer_lr_decay"):
        kiln.train.run(recipe)


def test_label_smoothing_mixes_the_uniform_target_into_the_training_loss(tmp_path: Path) -> None:
    # The first step sees the same logits whatever the smoothing, and smoothed cross-entropy is
    # (1 - e) * CE + e * mean_k(-log p_k): linear in e, so equal steps in e move it equally.
    first = []
    for eps in (0.0, 0.2, 0.4):
        run = tmp_path / f"ls{eps}"
        kiln.train.run(parse_recipe(tiny_image_recipe(run, max_steps=1, log_every_steps=1, label_smoothing=eps)))
        first.append(train_losses(run)[0])
    assert first[1] != pytest.approx(first[0], abs=1e-3)
    assert first[2] - first[1] == pytest.approx(first[1] - first[0], abs=1e-4)
