"""Training GPT-style language models: pretraining from scratch, supervised fine-tuning, LoRA,
exact resume, and the settings a language model refuses."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kiln.config import parse_recipe
from kiln.train import run as train_run
from tests.helpers import kiln_cli, write_recipe
from tests.language import tiny_gpt_recipe, write_corpus, write_qa_pairs


def test_lm_pretrain_cli_writes_a_generation_package(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_gpt_recipe(tmp_path / "run", corpus, max_steps=30))

    done = kiln_cli("train", str(recipe))

    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "run" / "package" / "kiln.json").read_text())
    assert manifest["task"] == "text-generation"
    assert manifest["lineage"]["settings"]["objective"] == "pretrain"
    assert manifest["preprocessing"]["context_length"] == 64
    validation = manifest["metrics"]["validation"]
    assert validation["perplexity"] == pytest.approx(math.exp(validation["loss"]))
    # Far below a uniform guess over the 300-token vocabulary: it learned the grammar.
    assert validation["loss"] < 0.6 * math.log(300)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["type"] == "train"]
    assert trains and all(r["tokens_per_s"] > 0 for r in trains)
    assert trains[-1]["loss"] < trains[0]["loss"]


def test_lm_sft_learns_to_write_the_responses(tmp_path: Path) -> None:
    from kiln.runtime import load_generator

    pairs = write_qa_pairs(tmp_path / "qa.jsonl")
    raw = tiny_gpt_recipe(tmp_path / "run", pairs, max_steps=None, epochs=6, batch_size=16)
    raw["model"]["vocab_size"] = 400
    raw["lm"]["sequence_length"] = 48
    result = train_run(parse_recipe(raw))

    assert result.package_dir is not None
    manifest = json.loads((result.package_dir / "kiln.json").read_text())
    assert manifest["lineage"]["settings"]["objective"] == "sft"
    generator = load_generator(result.package_dir)
    [answer] = generator.generate([[{"role": "user", "content": "What is the capital of France? (3)"}]])
    # It writes answers in the form of the responses, and ends them: the loss was on those alone.
    assert re.fullmatch(r"The capital of [A-Z][a-z]+ is [A-Z][a-z]+\.", answer.text), answer.text
    assert answer.finish_reason == "stop"


def _tiny_pretrained(folder: Path, tokenizer_source: Path) -> Path:
    """A local 'pretrained' model folder: a tiny random Llama with the tokenizer of an earlier run."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from kiln.runtime.weights import state_tensors

    folder.mkdir(parents=True)
    shutil.copyfile(tokenizer_source, folder / "tokenizer.json")
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    config.to_json_file(str(folder / "config.json"))
    save_file(state_tensors(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_lm_lora_trains_only_the_adapted_layers(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    first = train_run(parse_recipe(tiny_gpt_recipe(tmp_path / "bpe", corpus, max_steps=1)))
    base = _tiny_pretrained(tmp_path / "base", first.run_dir / "tokenizer.json")
    raw = tiny_gpt_recipe(tmp_path / "run", corpus, max_steps=4, lr=1e-2)
    raw["model"] = {"kind": "pretrained", "pretrained": str(base)}
    raw["lm"]["lora"] = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}

    result = train_run(parse_recipe(raw))

    assert result.package_dir is not None
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(result.package_dir / "model.safetensors"))
    # Every weight is there (the output head is tied to the embedding, so it is saved once).
    assert set(after) == set(before) - {"lm_head.weight"}
    changed = {k for k in before if k in after and not bool((before[k] == after[k]).all())}
    assert changed, "the merged adapters changed nothing"
    assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), sorted(changed)
    manifest = json.loads((result.package_dir / "kiln.json").read_text())
    assert manifest["lineage"]["parent"] == str(base)
    assert manifest["lineage"]["settings"]["lora"]["rank"] == 4


def test_lm_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    raw = tiny_gpt_recipe(tmp_path / "run", corpus, max_steps=6, checkpoint_every_steps=2, keep_checkpoints=3)
    reference = train_run(parse_recipe(raw))
    assert reference.package_dir is not None
    expected = load_file(str(reference.package_dir / "model.safetensors"))
    # As if the run had been killed after its step-4 checkpoint.
    shutil.rmtree(reference.run_dir / "checkpoints" / "step-00000006")
    shutil.rmtree(reference.package_dir)

    resumed = kiln_cli("train", str(write_recipe(tmp_path / "recipe.yaml", raw)), "--resume")

    assert resumed.returncode == 0, resumed.stderr
    got = load_file(str(reference.package_dir / "model.safetensors"))
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert bool((got[name] == tensor).all()), name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.metric=accuracy", "train.metric for task text-generation must be loss"),
        ("train.rdrop_alpha=1.0", "train.rdrop_alpha applies to classifiers only"),
        ("model.pretrained=no-such-model", "model.pretrained for task text-generation must be one of"),
    ],
    ids=["metric", "rdrop", "unknown-pretrained"],
)
def test_lm_refuses_settings_it_cannot_honour_before_writing(tmp_path: Path, override: str, message: str) -> None:
    raw = tiny_gpt_recipe(tmp_path / "run", write_corpus(tmp_path / "corpus.txt"))
    if override.startswith("model.pretrained"):
        raw["model"] = {"kind": "pretrained"}
    done = kiln_cli("train", str(write_recipe(tmp_path / "recipe.yaml", raw)), override)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "run").exists()
