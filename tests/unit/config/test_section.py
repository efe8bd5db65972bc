"""Every settings family (recipes, serve configs, search budgets) refuses bad values the same way."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.compress.search import SearchConfig
from kiln.config.schema import Recipe
from kiln.config.section import Section
from kiln.errors import ConfigError
from kiln.serve.config import ServeConfig


@pytest.mark.parametrize(
    ("section", "raw", "lines"),
    [
        (
            Recipe,
            {"name": "x", "data": {"dataset": "digits"}, "train": {"epochs": 0, "lr": "fast"}},
            [
                "x.yaml: invalid recipe:",
                "  train.epochs: Input should be greater than or equal to 1 (got 0)",
                "  train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')",
            ],
        ),
        (
            ServeConfig,
            {"port": 70000, "models": [{"versions": {1: "/m"}, "batching": {"max_batch": 8}}]},
            [
                "x.yaml: invalid serve config:",
                "  models.0.batching.max_batch: unknown key; allowed keys here: adaptive, compute_chunk_size,",
                "  port: Input should be less than or equal to 65535 (got 70000)",
            ],
        ),
        (
            ServeConfig,
            {"monitor": {"rules": [{"name": "a", "when": "accuracy < 0.8", "retrain": {"recipe": "r", "x": 1}}]}},
            ["  monitor.rules.0.retrain.x: unknown key; allowed keys here: canary_percent, cooldown_s,"],
        ),
        (
            SearchConfig,
            {"target_latency_ms": -1, "max_accuracy_drop": 1.0},
            ["x.yaml: invalid search budget:", "  target_latency_ms: Input should be greater than 0 (got -1)"],
        ),
    ],
)
def test_section_parse_names_each_key_its_value_and_what_is_allowed(
    section: type[Section], raw: dict[str, Any], lines: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        section.parse(raw, source="x.yaml")
    message = str(caught.value)
    for line in lines:
        assert line in message, message
