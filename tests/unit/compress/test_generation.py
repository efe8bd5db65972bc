"""Compression of text-generation packages through kiln.compress.run and `kiln compress`."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import kiln.compress
from kiln.compress import CompressError, Examples
from kiln.compress.generation import scoring_rows
from kiln.compress.smoothing import smooth_activations
from kiln.config.schema import CompressConfig
from kiln.runtime.generation import load_generator
from kiln.runtime.package import package_digest, read_manifest
from kiln.runtime.quantized import has_int8_dot_product
from tests.helpers import GENERATION_TEXTS, kiln_cli, tiny_generation_package, write_recipe

pytestmark = pytest.mark.timeout(180)

DOCUMENTS = list(dict.fromkeys(GENERATION_TEXTS))
EXAMPLES = Examples(eval_inputs=DOCUMENTS, eval_labels=None, train_inputs=DOCUMENTS * 3, train_labels=None)
DISTILL = {"num_layers": 1, "epochs": 4, "batch_size": 2, "lr": 3e-3}


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_generation_package(tmp_path_factory.mktemp("gen") / "parent")


def compress(parent: Path, out: Path, steps: list[str], **settings: Any) -> kiln.compress.CompressResult:
    cfg = CompressConfig.parse(settings, source="test")
    return kiln.compress.run(parent, output_dir=out, config=cfg, steps=steps, examples=EXAMPLES)


def size_bytes(package: Path) -> int:
    return sum((package / name).stat().st_size for name in read_manifest(package)["files"])


def loaded_perplexity(package: Path, examples: Examples = EXAMPLES) -> float:
    generator = load_generator(package, device="cpu")
    ids, masks = scoring_rows(generator, examples.eval_inputs, sequence_length=generator.context_length)
    nll, count = generator.score(ids, loss_mask=masks)
    return math.exp(nll / count)


def test_quantize_torch_writes_int8_package_that_loads_and_generates(parent: Path, tmp_path: Path) -> None:
    manifest = compress(parent, tmp_path / "out", ["quantize-torch"]).manifests[0]
    package = tmp_path / "out" / "01-quantize-torch"
    assert manifest["precision"] == "int8"
    quantization = manifest["architecture"]["quantization"]
    assert quantization["per_channel"] is True
    assert "lm_head" in quantization["modules"] and len(quantization["modules"]) == 2 * 7 + 1
    generator = load_generator(package)
    assert isinstance(generator.model.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    [answer] = generator.generate(["the cat sat"], max_new_tokens=6)
    assert answer.new_tokens >= 1 and answer.finish_reason in ("stop", "length")


def test_quantize_torch_package_is_smaller_on_disk(parent: Path, tmp_path: Path) -> None:
    compress(parent, tmp_path / "out", ["quantize-torch"])
    assert size_bytes(tmp_path / "out" / "01-quantize-torch") < 0.8 * size_bytes(parent)


def test_int8_perplexity_change_is_measured_on_the_package_as_loaded(parent: Path, tmp_path: Path) -> None:
    metrics = compress(parent, tmp_path / "out", ["quantize-torch"]).manifests[0]["metrics"]
    assert metrics["parent_perplexity"] == pytest.approx(loaded_perplexity(parent), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(loaded_perplexity(tmp_path / "out" / "01-quantize-torch"), rel=1e-5)
    assert metrics["perplexity_change"] == pytest.approx(metrics["perplexity"] / metrics["parent_perplexity"] - 1)
    assert metrics["scored_tokens"] > len(DOCUMENTS)
    assert abs(metrics["perplexity_change"]) < 0.1


def test_smoothing_keeps_the_fp32_function_and_moves_outliers_into_weights(parent: Path) -> None:
    generator = load_generator(parent, device="cpu")
    model = generator.model
    ids, _ = scoring_rows(generator, DOCUMENTS, sequence_length=32)
    batch = torch.tensor(ids)
    with torch.inference_mode():
        before = model(input_ids=batch).logits
    norm_before = model.model.layers[0].input_layernorm.weight.detach().clone()
    assert smooth_activations(model, ids, alpha=0.8) == 2
    with torch.inference_mode():
        after = model(input_ids=batch).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norm_before)


def test_quantize_torch_without_training_text_says_how_to_go_on(parent: Path, tmp_path: Path) -> None:
    examples = Examples(eval_inputs=DOCUMENTS, eval_labels=None, train_inputs=[], train_labels=None)
    cfg = CompressConfig.parse({}, source="test")
    with pytest.raises(CompressError, match="quantize.smooth_alpha=0"):
        kiln.compress.run(parent, output_dir=tmp_path / "out", config=cfg, steps=["quantize-torch"], examples=examples)
    assert not (tmp_path / "out" / "01-quantize-torch").exists()
    cfg = CompressConfig.parse({"quantize": {"smooth_alpha": 0}}, source="test")
    result = kiln.compress.run(
        parent, output_dir=tmp_path / "out", config=cfg, steps=["quantize-torch"], examples=examples
    )
    assert result.manifests[0]["metrics"]["smoothed_layers"] == 0


def test_cast_writes_bf16_package(parent: Path, tmp_path: Path) -> None:
    manifest = compress(parent, tmp_path / "out", ["cast"], cast={"dtype": "bf16"}).manifests[0]
    package = tmp_path / "out" / "01-cast"
    assert manifest["precision"] == "bf16"
    assert manifest["architecture"]["dtype"] == "bfloat16"
    generator = load_generator(package, device="cpu")
    assert {str(p.dtype) for p in generator.model.parameters()} == {"torch.bfloat16"}
    assert generator.generate(["a dog"], max_new_tokens=4)[0].new_tokens >= 1
    assert size_bytes(package) < 0.75 * size_bytes(parent)
    assert manifest["metrics"]["perplexity"] == pytest.approx(loaded_perplexity(package), rel=1e-4)


def test_distill_student_has_fewer_layers_and_learns_from_teacher(parent: Path, tmp_path: Path) -> None:
    manifest = compress(parent, tmp_path / "out", ["distill"], distill=DISTILL).manifests[0]
    package = tmp_path / "out" / "01-distill"
    assert manifest["precision"] == "fp32"
    report = manifest["metrics"]["distillation"]
    assert (report["teacher_layers"], report["student_layers"], report["layer_map"]) == (2, 1, [1])
    assert report["student_parameters"] < report["teacher_parameters"]
    losses = [epoch["loss"] for epoch in report["loss_history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    generator = load_generator(package, device="cpu")
    assert generator.model.config.num_hidden_layers == 1
    assert generator.generate(["the sun"], max_new_tokens=4)[0].new_tokens >= 1
    assert manifest["metrics"]["perplexity"] == pytest.approx(loaded_perplexity(package), rel=1e-5)


def test_distill_max_steps_stops_training(parent: Path, tmp_path: Path) -> None:
    manifest = compress(parent, tmp_path / "out", ["distill"], distill={**DISTILL, "max_steps": 3}).manifests[0]
    assert manifest["metrics"]["distillation"]["steps"] == 3


def test_each_step_records_lineage_to_its_parent(parent: Path, tmp_path: Path) -> None:
    result = compress(parent, tmp_path / "out", ["distill", "quantize-torch"], distill=DISTILL)
    first, second = result.manifests
    assert first["lineage"]["parent"]["digest"] == package_digest(read_manifest(parent))
    assert first["lineage"]["transformation"] == "distill"
    assert first["lineage"]["settings"]["num_layers"] == 1
    assert second["lineage"]["parent"] == {
        "path": str(result.packages[0].resolve()),
        "digest": package_digest(read_manifest(result.packages[0])),
    }
    assert second["lineage"]["settings"] == {
        "per_channel": True,
        "method": "torch-ao-dynamic-int8",
        "smooth_alpha": 0.8,
        "calibration_samples": len(EXAMPLES.train_inputs),
        "full_range_activations": has_int8_dot_product(),
        "per_token_activations": True,
    }
    # The second step's parent is the student: its perplexity is the one the first step measured.
    assert second["metrics"]["parent_perplexity"] == pytest.approx(first["metrics"]["perplexity"], rel=1e-6)
    assert second["generation"] == first["generation"] == read_manifest(parent)["generation"]


@pytest.mark.parametrize("step", ["onnx", "quantize-dynamic", "quantize-static", "prune", "vocab", "sparsity"])
def test_steps_for_classifiers_are_refused_before_anything_is_written(parent: Path, tmp_path: Path, step: str) -> None:
    with pytest.raises(CompressError, match=rf"step '{step}' does not apply to a 'text-generation' package"):
        compress(parent, tmp_path / "out", ["quantize-torch", step])
    assert not (tmp_path / "out").exists()


def test_a_step_after_int8_is_refused_before_anything_is_written(parent: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match=r"step 'cast' needs a fp32 text-generation package.*'int8'"):
        compress(parent, tmp_path / "out", ["quantize-torch", "cast"])
    assert not (tmp_path / "out").exists()


def test_distill_refuses_classifier_settings(parent: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match=r"distill\.hidden_size"):
        compress(parent, tmp_path / "out", ["distill"], distill={"hidden_size": 16})
    assert not list(tmp_path.glob("out/*"))


def test_distill_refuses_a_deeper_student(parent: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match=r"num_layers 3 > 2"):
        compress(parent, tmp_path / "out", ["distill"], distill={"num_layers": 3})


def test_conversations_score_the_reply_through_the_chat_template(parent: Path, tmp_path: Path) -> None:
    conversations = [
        ({"role": "user", "content": "what is the capital of france?"}, {"role": "assistant", "content": "paris"}),
        ({"role": "user", "content": "where did the cat sit?"}, {"role": "assistant", "content": "on the mat"}),
    ]
    generator = load_generator(parent, device="cpu")
    ids, masks = scoring_rows(generator, conversations, sequence_length=64)
    assert masks is not None and len(ids) == 2
    reply = [t for t, m in zip(ids[0], masks[0], strict=True) if m]
    prompt = [t for t, m in zip(ids[0], masks[0], strict=True) if not m]
    assert generator.tokenizer.decode(reply, skip_special_tokens=False) == "paris<|endoftext|>"
    assert generator.tokenizer.decode(prompt, skip_special_tokens=False).endswith("france?\n<|assistant|>\n")
    examples = Examples(eval_inputs=conversations, eval_labels=None, train_inputs=conversations, train_labels=None)
    cfg = CompressConfig.parse({}, source="test")
    manifest = kiln.compress.run(
        parent, output_dir=tmp_path / "out", config=cfg, steps=["quantize-torch"], examples=examples
    ).manifests[0]
    assert manifest["metrics"]["scored_tokens"] == sum(sum(m[1:]) for m in masks)


def test_conversations_are_scored_after_the_package_system_prompt(parent: Path) -> None:
    generator = load_generator(parent, device="cpu")
    generator.system_prompt = "answer in one word"
    conversation = ({"role": "user", "content": "capital of france?"}, {"role": "assistant", "content": "paris"})
    own = ({"role": "system", "content": "be kind"}, *conversation)
    ids, masks = scoring_rows(generator, [conversation, own], sequence_length=64)
    assert masks is not None
    prompts = [
        generator.tokenizer.decode([t for t, m in zip(i, k, strict=True) if not m])
        for i, k in zip(ids, masks, strict=True)
    ]
    assert "answer in one word" in prompts[0]
    assert "be kind" in prompts[1] and "answer in one word" not in prompts[1]


def generation_recipe(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{text} ({i})" for i in range(6) for text in DOCUMENTS) + "\n", encoding="utf-8")
    return write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "tiny-gpt",
            "task": "text-generation",
            "data": {"train_file": str(corpus)},
            "model": {"kind": "gpt", "size": "tiny", "vocab_size": 300, "max_length": 64},
            "lm": {"sequence_length": 32},
        },
    )


def test_cli_compress_generation_package_with_recipe_text(parent: Path, tmp_path: Path) -> None:
    recipe = generation_recipe(tmp_path)
    result = kiln_cli(
        "compress", str(parent), "--steps", "quantize-torch", "--output", str(tmp_path / "out"), "--recipe", str(recipe)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["transformation"], summary["precision"]) == ("quantize-torch", "int8")
    assert summary["metrics"]["scored_tokens"] > 0
    assert "perplexity_change" in summary["metrics"]
    assert load_generator(tmp_path / "out" / "01-quantize-torch").generate(["the"], max_new_tokens=3)[0].new_tokens >= 1


def test_cli_compress_refuses_step_for_generation_with_exit_2(parent: Path, tmp_path: Path) -> None:
    recipe = generation_recipe(tmp_path)
    result = kiln_cli(
        "compress", str(parent), "--steps", "onnx", "--output", str(tmp_path / "out"), "--recipe", str(recipe)
    )
    assert result.returncode == 2
    assert "step 'onnx' does not apply to a 'text-generation' package" in result.stderr
    assert "quantize-torch, cast, distill" in result.stderr
    assert not (tmp_path / "out").exists()
