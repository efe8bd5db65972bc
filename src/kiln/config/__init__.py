"""Recipes: typed configuration for every stage, loaded from YAML with overrides."""

from kiln.config.loader import apply_overrides, load_recipe, parse_recipe
from kiln.config.schema import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    Recipe,
    TrainConfig,
)

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "Recipe",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "parse_recipe",
]
