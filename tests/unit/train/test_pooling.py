import json
from pathlib import Path

import pytest

import kiln.compress
import kiln.train
from kiln.compress.errors import CompressError
from kiln.compress.search import SearchConfig, search
from kiln.config import parse_recipe
from kiln.config.schema import CompressConfig
from kiln.runtime import load
from tests.helpers import tiny_text_recipe


def test_mean_pooling_model_trains_loads_and_exports(tmp_path: Path) -> None:
    raw = tiny_text_recipe(tmp_path / "run", max_steps=3)
    raw["model"]["pooling"] = "mean"
    result = kiln.train.run(parse_recipe(raw))
    config = json.loads((result.package_dir / "config.json").read_text())
    assert config["kiln_pooling"] == "mean"
    predictor = load(result.package_dir)
    assert type(predictor.engine.model).__name__ == "MeanPoolingBertForSequenceClassification"
    outputs = predictor.predict(["a fine film", "a dreadful bore"])
    assert [set(o["scores"]) for o in outputs] == [{"fresh", "rotten"}] * 2

    written = kiln.compress.run(result.package_dir, output_dir=tmp_path / "onnx", steps=["onnx"])
    onnx_package = written.packages[0]
    manifest = json.loads((onnx_package / "kiln.json").read_text())
    assert manifest["format"] == "onnx"
    onnx_outputs = load(onnx_package).predict(["a fine film", "a dreadful bore"])
    for a, b in zip(outputs, onnx_outputs, strict=True):
        assert a["label"] == b["label"]


def _tiny_mpnet_folder(folder: Path) -> Path:
    """A randomly initialised 2-layer MPNet saved like a pretrained encoder, with a tokenizer that
    pads with id 1 as MPNet's does."""
    from tokenizers import Tokenizer
    from transformers import MPNetConfig, MPNetModel

    from kiln.data.sources import load_builtin
    from kiln.data.tokenizer import train_wordpiece

    folder.mkdir(parents=True)
    texts = list(load_builtin("rotten_tomatoes").inputs[:2000])
    train_wordpiece(texts, 400, folder / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=1, pad_token=tokenizer.id_to_token(1))
    tokenizer.save(str(folder / "tokenizer.json"))
    config = MPNetConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    MPNetModel(config).save_pretrained(str(folder))
    return folder


def test_mean_pooling_serves_an_encoder_family_other_than_bert(tmp_path: Path) -> None:
    source = _tiny_mpnet_folder(tmp_path / "mpnet")
    raw = tiny_text_recipe(tmp_path / "run", max_steps=3, layer_lr_decay=0.8)
    raw["model"] = {"kind": "pretrained", "pretrained": str(source), "pooling": "mean", "max_length": 32}
    result = kiln.train.run(parse_recipe(raw))
    config = json.loads((result.package_dir / "config.json").read_text())
    assert (config["model_type"], config["kiln_pooling"]) == ("mpnet", "mean")
    # The encoder started from the pretrained weights: 3 small steps moved them by little, where
    # another random start would differ by the init's whole spread (std 0.02).
    from safetensors.torch import load_file

    start = load_file(str(source / "model.safetensors"))["embeddings.word_embeddings.weight"]
    trained = load_file(str(result.package_dir / "model.safetensors"))["mpnet.embeddings.word_embeddings.weight"]
    assert (trained - start).abs().max().item() < 0.01

    predictor = load(result.package_dir)
    assert type(predictor.engine.model).__name__ == "MeanPoolingMPNetForSequenceClassification"
    batch = predictor.preprocessor(["fine", "a long and thoroughly dreadful bore of a film"])
    assert batch["input_ids"][0, -1] == 1 and batch["attention_mask"][0, -1] == 0  # padded with MPNet's id
    alone = predictor.predict(["fine"])[0]["scores"]
    padded = predictor.predict(["fine", "a long and thoroughly dreadful bore of a film"])[0]["scores"]
    assert alone == pytest.approx(padded, abs=1e-5)

    written = kiln.compress.run(result.package_dir, output_dir=tmp_path / "onnx", steps=["onnx"])
    onnx_outputs = load(written.packages[0]).predict(["a fine film", "a dreadful bore"])
    for a, b in zip(predictor.predict(["a fine film", "a dreadful bore"]), onnx_outputs, strict=True):
        assert a["label"] == b["label"]
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-4)

    # A latency-budget search skips what cannot apply to this family and still measures the rest.
    budget = SearchConfig(
        target_latency_ms=1000.0, max_accuracy_drop=100.0, prune_fractions=(0.0, 0.25), latency_runs=3
    )
    fast = CompressConfig.model_validate({"eval_samples": 32, "num_threads": 1})
    searched = search(result.package_dir, output_dir=tmp_path / "search", budget=budget, config=fast)
    reasons = {s["id"]: s["reason"] for s in searched.skipped}
    refusal = "pruning and vocab trimming support BERT-family encoders, not 'mpnet'"
    assert reasons["vocab"] == reasons["L2-p25"] == refusal
    assert searched.chosen is not None and {c["id"] for c in searched.candidates} >= {"L2-p0-fp32", "L2-p0-int8"}

    for step, what in (("prune", "structured pruning"), ("vocab", "vocab trimming")):
        with pytest.raises(CompressError, match=rf"{what} supports BERT-family encoders, not 'mpnet'"):
            kiln.compress.run(result.package_dir, output_dir=tmp_path / step, steps=[step])
        assert not (tmp_path / step).exists() or not any((tmp_path / step).iterdir())
