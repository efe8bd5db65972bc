"""Shared fixtures: small real model packages written through Kiln's own package writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.smollm2 import smollm2_conversion  # noqa: F401  (a session fixture)

SENTENCES = [
    "the film was a delight from start to finish",
    "a dull and lifeless script with nothing to say",
    "wonderful acting and a moving story",
    "boring, predictable and far too long",
    "one of the best movies of the year",
    "i want those two hours of my life back",
] * 5


def make_text_package(dest: Path, labels: tuple[str, ...] = ("neg", "pos")) -> Path:
    """An untrained tiny BERT text classifier with a trained WordPiece tokenizer."""
    import torch

    from kiln.data.tokenizer import train_wordpiece
    from kiln.runtime.architectures import bert_config, build_text_classifier
    from kiln.runtime.weights import write_torch_package

    torch.manual_seed(0)
    tok = train_wordpiece(SENTENCES, vocab_size=200, dest=dest.parent / f"{dest.name}-tok.json")
    config = bert_config(size="tiny", vocab_size=200, num_labels=len(labels), max_length=32, dropout=0.0)
    model = build_text_classifier(config)
    write_torch_package(
        dest,
        model=model,
        architecture={"family": "hf"},
        manifest=_manifest(
            name=dest.name,
            task="text-classification",
            labels=list(labels),
            input_schema={"kind": "text"},
            preprocessing={"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": 32},
        ),
        extra_files={"tokenizer.json": tok},
    )
    return dest


def make_image_package(dest: Path) -> Path:
    """An untrained small CNN for 8x8 single-channel images with 10 classes."""
    import torch

    from kiln.runtime.architectures import build_cnn
    from kiln.runtime.weights import write_torch_package

    torch.manual_seed(0)
    params = {
        "in_channels": 1,
        "image_size": 8,
        "num_labels": 10,
        "channels": [4, 8],
        "hidden_size": 16,
        "dropout": 0.0,
    }
    write_torch_package(
        dest,
        model=build_cnn(params),
        architecture={"family": "cnn", "params": params},
        manifest=_manifest(
            name=dest.name,
            task="image-classification",
            labels=[str(i) for i in range(10)],
            input_schema={"kind": "image", "shape": [1, 8, 8], "max_value": 16.0},
            preprocessing={"kind": "image", "shape": [1, 8, 8], "max_value": 16.0, "mean": 0.3, "std": 0.4},
        ),
    )
    return dest


def _manifest(**fields: Any) -> dict[str, Any]:
    return dict(
        fields,
        precision="fp32",
        lineage={"parent": None, "transformation": "test-fixture", "settings": {}},
        metrics={},
        data_fingerprint="sha256:" + "0" * 64,
        recipe={},
    )


@pytest.fixture
def text_package(tmp_path: Path) -> Path:
    return make_text_package(tmp_path / "text-pkg")


@pytest.fixture
def image_package(tmp_path: Path) -> Path:
    return make_image_package(tmp_path / "image-pkg")


@pytest.fixture(scope="session")
def trained_text_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT teacher trained for a few steps by ``kiln.train`` on its recipe's real data."""
    import kiln.train
    from kiln.config import parse_recipe
    from tests.helpers import tiny_text_recipe

    run_dir = tmp_path_factory.mktemp("teacher-run")
    result = kiln.train.run(parse_recipe(tiny_text_recipe(run_dir, epochs=2)))
    assert result.package_dir is not None
    return result.package_dir


@pytest.fixture(autouse=True)
def _isolated_kiln_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every process it starts) gets its own KILN_HOME: runs and registries
    never land in the working tree or leak between tests."""
    monkeypatch.setenv("KILN_HOME", str(tmp_path_factory.mktemp("kiln-home")))
