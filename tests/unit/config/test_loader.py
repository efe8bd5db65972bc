from pathlib import Path

import pytest

from kiln.config import apply_overrides, load_recipe, parse_recipe
from kiln.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_recipe_shipped_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name


def test_load_recipe_applies_override_with_yaml_type(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {dataset: digits}\n")
    recipe = load_recipe(path, ["train.epochs=7", "train.lr=0.001", "data.augment.text.methods=[swap]"])
    assert recipe.train.epochs == 7
    assert recipe.train.lr == pytest.approx(0.001)
    assert recipe.data.augment.text.methods == ["swap"]


def test_load_recipe_unknown_key_names_key_file_and_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: r\ndata: {dataset: digits}\ntrain: {epoch: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert "train.epoch: unknown key" in message
    assert "epochs" in message


def test_load_recipe_wrong_type_names_value_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: r\ndata: {dataset: digits}\ntrain: {batch_size: 0, precision: fp8}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "train.batch_size: Input should be greater than or equal to 1 (got 0)" in message
    assert "train.precision: Input should be 'fp32' or 'bf16' (got 'fp8')" in message


def test_load_recipe_malformed_yaml_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: r\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def test_parse_recipe_requires_exactly_one_data_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of data.dataset or data.train_file"):
        parse_recipe({"name": "r", "data": {"dataset": "digits", "train_file": "x.csv"}})


def test_apply_overrides_rejects_malformed_item() -> None:
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, ["train.epochs"])


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"train": {"epochs": 1}}
    apply_overrides(raw, ["train.epochs=2"])
    assert raw == {"train": {"epochs": 1}}
