"""Build the model a recipe asks for, with the preprocessing that goes with it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from kiln.config.schema import Recipe
from kiln.data import Dataset
from kiln.data.tokenizer import copy_pretrained_tokenizer, resolve_pretrained, train_wordpiece
from kiln.errors import ConfigError
from kiln.runtime.architectures import (
    bert_config,
    build_cnn,
    build_text_classifier,
    mean_pooling_classifier_class,
)
from kiln.runtime.preprocessing import ImagePreprocessor, TextPreprocessor


@dataclass
class BuiltModel:
    """A freshly built model and everything the package needs to run it again."""

    model: nn.Module
    architecture: dict[str, Any]  # manifest "architecture" entry (without weights)
    preprocessing: dict[str, Any]  # manifest "preprocessing" entry
    input_schema: dict[str, Any]
    preprocessor: TextPreprocessor | ImagePreprocessor
    extra_files: dict[str, Path]  # files to copy into the package (tokenizer.json)
    parent: str | None  # the pretrained model it started from


def build_model(recipe: Recipe, dataset: Dataset, tokenizer_file: Path | None) -> BuiltModel:
    """Build the recipe's model for ``dataset``; text models use ``tokenizer_file``."""
    cfg = recipe.model
    if dataset.kind == "image":
        if cfg.kind != "cnn":
            raise ConfigError(f"model.kind={cfg.kind!r} cannot read images; use model.kind=cnn")
        return _build_cnn(recipe, dataset)
    if cfg.kind == "cnn":
        raise ConfigError("model.kind=cnn needs an image dataset; use pretrained or bert for text")
    assert tokenizer_file is not None
    return _build_text(recipe, dataset, tokenizer_file)


def prepare_tokenizer(recipe: Recipe, dataset: Dataset, dest: Path, *, reuse: bool) -> Path:
    """Write the tokenizer a text model uses to ``dest`` and return its path.

    A trained tokenizer is the same for the same text in any process; it is still trained once
    per run, by rank 0, and reused on resume (``reuse``) and by every data-parallel rank.
    """
    cfg = recipe.model
    if cfg.kind == "pretrained":
        copy_pretrained_tokenizer(cfg.pretrained, dest)
    elif cfg.tokenizer_file is not None:
        source = Path(cfg.tokenizer_file)
        if not source.is_file():
            raise ConfigError(f"model.tokenizer_file not found: {source}")
        shutil.copyfile(source, dest)
    elif not (reuse and dest.is_file()):
        tmp = dest.with_name(f".{dest.name}.tmp")
        train_wordpiece(list(dataset.train.inputs), cfg.vocab_size, tmp)
        os.replace(tmp, dest)
    return dest


def _build_text(recipe: Recipe, dataset: Dataset, tokenizer_file: Path) -> BuiltModel:
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # The new classifier head is expected to be missing from a pretrained encoder; HF's load
    # report and progress bar would only alarm users, so they are turned off here.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    cfg = recipe.model
    labels = dataset.label_names
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    if cfg.kind == "pretrained":
        source = resolve_pretrained(cfg.pretrained)
        config = AutoConfig.from_pretrained(str(source), num_labels=len(labels), id2label=id2label, label2id=label2id)
        if cfg.dropout is not None:
            config.hidden_dropout_prob = cfg.dropout
            config.attention_probs_dropout_prob = cfg.dropout
        if cfg.pooling == "mean":
            config.kiln_pooling = "mean"
            model: nn.Module = mean_pooling_classifier_class(config.model_type).from_pretrained(
                str(source), config=config
            )
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(source), config=config)
        parent: str | None = cfg.pretrained
    else:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
        config = bert_config(
            size=cfg.size,
            vocab_size=vocab,
            num_labels=len(labels),
            max_length=cfg.max_length,
            dropout=cfg.dropout,
        )
        config.id2label, config.label2id = id2label, label2id
        if cfg.pooling == "mean":
            config.kiln_pooling = "mean"
        model = build_text_classifier(config)
        parent = None
    return BuiltModel(
        model=model,
        architecture={"family": "hf"},
        preprocessing={"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": cfg.max_length},
        input_schema={"kind": "text"},
        preprocessor=TextPreprocessor(tokenizer_file, cfg.max_length),
        extra_files={"tokenizer.json": tokenizer_file},
        parent=parent,
    )


def _build_cnn(recipe: Recipe, dataset: Dataset) -> BuiltModel:
    cfg = recipe.model.cnn
    images = np.asarray(dataset.train.inputs, dtype=np.float32)
    channels, height, width = images.shape[1:]
    if height != width:
        raise ConfigError(f"the CNN needs square images, got {height}x{width}")
    unit = images / dataset.image_max_value
    # Normalisation statistics come from the train split only, so no test information leaks.
    mean, std = float(unit.mean()), float(unit.std() or 1.0)
    params = {
        "in_channels": int(channels),
        "image_size": int(height),
        "num_labels": len(dataset.label_names),
        "channels": list(cfg.channels),
        "hidden_size": cfg.hidden_size,
        "dropout": cfg.dropout,
    }
    if height >> len(cfg.channels) < 1:
        raise ConfigError(f"model.cnn.channels has {len(cfg.channels)} blocks, too many for {height}px images")
    shape = [int(channels), int(height), int(width)]
    prep = {"kind": "image", "shape": shape, "max_value": dataset.image_max_value, "mean": mean, "std": std}
    return BuiltModel(
        model=build_cnn(params),
        architecture={"family": "cnn", "params": params},
        preprocessing=prep,
        input_schema={"kind": "image", "shape": shape, "max_value": dataset.image_max_value},
        preprocessor=ImagePreprocessor(shape=shape, max_value=dataset.image_max_value, mean=mean, std=std),
        extra_files={},
        parent=None,
    )
