"""Real inputs that compression checks and calibrates with: raw examples, not features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiln.compress.errors import CompressError
from kiln.config.schema import CompressConfig


@dataclass(frozen=True)
class Examples:
    """Raw inputs for the steps: eval inputs check a package, train inputs calibrate it."""

    eval_inputs: Sequence[Any]  # raw inputs (texts, pixel arrays, documents or conversations) to check with
    eval_labels: Sequence[str] | None  # their label names, when known, for the accuracy change
    train_inputs: Sequence[Any]  # raw inputs for calibration, importance scores and distillation
    train_labels: Sequence[str] | None  # their label names, when known

    def __post_init__(self) -> None:
        if len(self.eval_inputs) == 0:
            raise CompressError("no evaluation inputs: compression needs real inputs to check with")
        for name, inputs, labels in (
            ("eval", self.eval_inputs, self.eval_labels),
            ("train", self.train_inputs, self.train_labels),
        ):
            if labels is not None and len(labels) != len(inputs):
                raise CompressError(
                    f"{name}_labels has {len(labels)} entries for {len(inputs)} {name} inputs"
                )


def examples_from_recipe(
    manifest: dict[str, Any], *, eval_samples: int, train_samples: int
) -> Examples | None:
    """Examples from the data of the recipe recorded in a package's manifest, if it has one.

    For a text-generation recipe: documents or conversations, ``eval_samples`` of the
    validation split and the whole train split, without labels.
    """
    from pydantic import ValidationError

    from kiln.config.schema import Recipe

    raw = manifest.get("recipe")
    if not raw:
        return None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError:
        return None
    import kiln.data

    if recipe.is_generation:
        # Distillation trains on the whole train split; the validation text scores perplexity.
        language = kiln.data.load_language_data(recipe)
        return Examples(
            eval_inputs=list(language.validation[:eval_samples]),
            eval_labels=None,
            train_inputs=list(language.train),
            train_labels=None,
        )
    dataset = kiln.data.run(recipe)
    names = dataset.label_names
    val, train = dataset.validation, dataset.train
    n_eval, n_train = min(eval_samples, len(val)), min(train_samples, len(train))
    return Examples(
        eval_inputs=list(val.inputs[:n_eval]),
        eval_labels=[names[int(i)] for i in val.labels[:n_eval]],
        train_inputs=list(train.inputs[:n_train]),
        train_labels=[names[int(i)] for i in train.labels[:n_train]],
    )


def train_samples_needed(cfg: CompressConfig, steps: Sequence[str]) -> int:
    """How many training inputs the steps use: calibration, importance ranking, vocabulary."""
    return max(
        cfg.quantize.calibration_samples,
        cfg.prune.importance_samples,
        cfg.vocab.samples if "vocab" in steps else 0,
    )
