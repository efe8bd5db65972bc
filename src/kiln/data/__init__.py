"""The data stage: load examples, clean and split them, and describe how to preprocess them.

``run(recipe) -> Dataset`` reads the recipe's ``data`` section and returns seeded, stratified
train/validation/test splits with their fingerprint; ``load_language_data(recipe) -> LanguageData``
does the same for text generation (documents or conversations). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.config.schema import DataConfig, Recipe
from kiln.data.augment import augment_texts
from kiln.data.corpus import Conversation, LanguageData, load_language_data
from kiln.data.sources import IMAGE, TEXT, RawData, load_builtin, load_text_file
from kiln.data.splits import (
    Split,
    drop_duplicates,
    encode_labels,
    fingerprint,
    stratified_indices,
    stratified_sample,
)
from kiln.errors import DataError

__all__ = ["Conversation", "Dataset", "LanguageData", "Split", "run", "load_language_data", "IMAGE", "TEXT"]


@dataclass(frozen=True)
class Dataset:
    """Prepared splits and what downstream stages need to know about them."""

    kind: str  # "text" or "image"
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    fingerprint: str  # sha256 of the canonical content of all three splits
    origin: str
    image_max_value: float = 255.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return "text-classification" if self.kind == TEXT else "image-classification"


def run(recipe: Recipe) -> Dataset:
    """Load, de-duplicate, split and augment the recipe's data.

    Raises:
        DataError: a file or column is missing, the data is empty or has a single class, or
            bytes cannot be decoded.
    """
    cfg = recipe.data
    rng = np.random.default_rng(recipe.seed)
    raw = _load(cfg)
    raw_test = _load_test(cfg)
    n_loaded = len(raw.labels)
    if cfg.drop_duplicates:
        raw = drop_duplicates(raw)
    _check_usable(raw)
    label_names = sorted(set(raw.labels), key=_label_sort_key)
    labels = encode_labels(raw.labels, label_names, raw.origin)
    everything = Split(raw.inputs, labels)

    if cfg.max_examples is not None:
        everything = everything.take(stratified_sample(labels, cfg.max_examples, rng))
    if raw_test is None:
        rest_idx, test_idx = stratified_indices(everything.labels, cfg.test_fraction, rng)
        test = everything.take(test_idx)
        rest = everything.take(rest_idx)
    else:
        test_labels = encode_labels(raw_test.labels, label_names, raw_test.origin)
        test = Split(raw_test.inputs, test_labels)
        if cfg.max_examples is not None:
            cap = max(10, int(cfg.max_examples * cfg.test_fraction))
            test = test.take(stratified_sample(test.labels, cap, rng))
        rest = everything
    train_idx, val_idx = stratified_indices(rest.labels, cfg.val_fraction, rng)
    train, validation = rest.take(train_idx), rest.take(val_idx)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if len(split) == 0:
            raise DataError(f"{raw.origin}: the {name} split is empty; use more data")
    splits = {"train": train, "validation": validation, "test": test}
    digest = fingerprint(splits, label_names, raw.kind)
    if raw.kind == TEXT and cfg.augment.text.methods:
        texts, aug_labels = augment_texts(list(train.inputs), train.labels, cfg.augment.text, rng)
        train = Split(texts, aug_labels)
    return Dataset(
        kind=raw.kind,
        label_names=label_names,
        train=train,
        validation=validation,
        test=test,
        fingerprint=digest,
        origin=raw.origin,
        image_max_value=raw.image_max_value,
        stats={
            "loaded": n_loaded,
            "after_dedup": len(raw.labels),
            "train": len(train),
            "validation": len(validation),
            "test": len(test),
        },
    )


def _load(cfg: DataConfig) -> RawData:
    if cfg.dataset is not None:
        return load_builtin(cfg.dataset)
    assert cfg.train_file is not None
    return load_text_file(
        cfg.train_file,
        fmt=cfg.format,
        encoding=cfg.encoding,
        has_header=cfg.has_header,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
    )


def _load_test(cfg: DataConfig) -> RawData | None:
    if cfg.test_file is None:
        return None
    return load_text_file(
        cfg.test_file,
        fmt=cfg.format,
        encoding=cfg.encoding,
        has_header=cfg.has_header,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
    )


def _check_usable(raw: RawData) -> None:
    if len(raw.labels) == 0:
        raise DataError(f"{raw.origin}: the dataset is empty (no rows with both text and label)")
    classes = set(raw.labels)
    if len(classes) < 2:
        raise DataError(
            f"{raw.origin}: only one class ({next(iter(classes))!r}) in the labels; classification needs at least two"
        )


def _label_sort_key(name: str) -> tuple[int, Any]:
    # Numeric labels sort numerically ("2" before "10"); others alphabetically.
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)
