"""Vocabulary trimming: fewer embedding rows, the same logits on texts whose tokens were kept."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import kiln.compress
import kiln.runtime
from kiln.compress import CompressError, Examples
from kiln.compress.checks import logits_of_inputs
from kiln.config.schema import CompressConfig, VocabConfig
from kiln.runtime.weights import load_torch_model

pytestmark = pytest.mark.timeout(120)

TRAIN = ["the film was a delight from start to finish", "boring, predictable and far too long"]
OTHER = ["a dull and lifeless script with nothing to say", "wonderful acting and a moving story"]


def _examples() -> Examples:
    return Examples(
        eval_inputs=TRAIN + OTHER,
        eval_labels=["pos", "neg", "neg", "pos"],
        train_inputs=TRAIN,
        train_labels=["pos", "neg"],
    )


def _trim(package: Path, tmp_path: Path, **settings: object) -> tuple[Path, dict]:
    cfg = CompressConfig(vocab=VocabConfig(**settings))
    result = kiln.compress.run(package, output_dir=tmp_path / "out", steps=["vocab"], config=cfg, examples=_examples())
    return result.packages[0], result.manifests[0]


def test_vocab_keeps_used_tokens_and_gives_the_same_logits(text_package: Path, tmp_path: Path) -> None:
    child, manifest = _trim(text_package, tmp_path, keep_characters=False)
    parent_tok = Tokenizer.from_file(str(text_package / "tokenizer.json"))
    used = {t for text in TRAIN for t in parent_tok.encode(text).tokens}
    child_vocab = json.loads((child / "tokenizer.json").read_text())["model"]["vocab"]
    assert used <= set(child_vocab)  # every token the texts use, [CLS]/[SEP] included
    assert sorted(child_vocab.values()) == list(range(len(child_vocab)))
    sizes = manifest["metrics"]["vocab_size"]
    assert sizes["before"] == 200 and sizes["after"] == len(child_vocab) < 200
    params = manifest["metrics"]["parameters"]
    assert params["after"] < params["before"]
    model = load_torch_model(child, manifest)
    assert model.bert.embeddings.word_embeddings.num_embeddings == len(child_vocab)
    assert model.bert.embeddings.position_embeddings.num_embeddings == 32  # the package's max_length
    assert manifest["lineage"]["transformation"] == "vocab"
    # Texts made only of kept tokens: the same ids in a new numbering, so the same logits.
    before = logits_of_inputs(kiln.runtime.load(text_package), TRAIN)
    after = logits_of_inputs(kiln.runtime.load(child), TRAIN)
    np.testing.assert_allclose(after, before, atol=1e-5)
    # Any other text still tokenizes into kept pieces (or [UNK]) and predicts.
    predictions = kiln.runtime.load(child).predict(OTHER + ["zebra quokka"])
    assert len(predictions) == 3


def test_vocab_keeps_characters_so_unseen_words_are_spelt_out(text_package: Path, tmp_path: Path) -> None:
    child, manifest = _trim(text_package, tmp_path)
    tokens = Tokenizer.from_file(str(child / "tokenizer.json")).encode("lifeless script").tokens
    assert "[UNK]" not in tokens and len(tokens) > 4
    assert manifest["metrics"]["vocab_size"]["after"] < 200


def test_vocab_chains_into_onnx_int8(text_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(
        text_package, output_dir=tmp_path / "out", steps=["vocab", "onnx", "quantize-dynamic"], examples=_examples()
    )
    onnx_manifest = result.manifests[1]
    assert onnx_manifest["metrics"]["parity"]["max_abs_logit_diff"] <= 1e-4
    assert len(kiln.runtime.load(result.packages[2]).predict(OTHER)) == 2


def test_vocab_refuses_onnx_package_and_leaves_nothing(text_package: Path, tmp_path: Path) -> None:
    onnx = kiln.compress.run(text_package, output_dir=tmp_path / "a", steps=["onnx"], examples=_examples())
    with pytest.raises(CompressError, match="vocab needs a fp32 torch package"):
        kiln.compress.run(onnx.packages[0], output_dir=tmp_path / "b", steps=["vocab"], examples=_examples())
    assert not (tmp_path / "b" / "01-vocab").exists()
