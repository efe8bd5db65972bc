import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kiln.compress
import kiln.runtime
from kiln.compress import CompressError, Examples
from kiln.config.schema import CompressConfig, OnnxExportConfig, PruneConfig, SparsityConfig
from kiln.errors import KilnError, PackageError
from kiln.runtime.package import package_digest, read_manifest

pytestmark = pytest.mark.timeout(120)

SENTENCES_LABELLED = (
    [
        "the film was a delight from start to finish",
        "a dull and lifeless script with nothing to say",
        "wonderful acting and a moving story",
        "boring, predictable and far too long",
        "one of the best movies of the year",
        "i want those two hours of my life back",
        "an unseen phrase with zebra words",
    ],
    ["pos", "neg", "pos", "neg", "pos", "neg", "pos"],
)


def text_examples() -> Examples:
    texts, labels = SENTENCES_LABELLED
    return Examples(eval_inputs=texts, eval_labels=labels, train_inputs=texts * 3, train_labels=labels * 3)


def image_examples() -> Examples:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 17, size=64).tolist() for _ in range(24)]
    return Examples(eval_inputs=images, eval_labels=None, train_inputs=images, train_labels=None)


def test_onnx_export_text_matches_torch_logits(text_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(text_package, output_dir=tmp_path / "out", steps=["onnx"], examples=text_examples())
    manifest = result.manifests[0]
    assert manifest["format"] == "onnx"
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}
    parity = manifest["metrics"]["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4
    assert parity["prediction_agreement"] == 1.0
    assert manifest["architecture"]["optimized"] is True
    # Every encoder layer's attention fused into one ONNX Runtime Attention operator.
    assert manifest["architecture"]["fused_operators"]["Attention"] == 2


def test_onnx_export_image_matches_torch_logits(image_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(image_package, output_dir=tmp_path / "out", steps=["onnx"], examples=image_examples())
    assert result.manifests[0]["metrics"]["parity"]["max_abs_logit_diff"] <= 1e-4


def test_onnx_package_predicts_any_batch_and_length_like_torch(text_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(text_package, output_dir=tmp_path / "out", steps=["onnx"], examples=text_examples())
    texts = ["short", "a much longer sentence with many more words than the first one has"] * 3
    torch_probs = kiln.runtime.load(text_package, device="cpu").predict_proba(texts)
    onnx_probs = kiln.runtime.load(result.packages[0], num_threads=1).predict_proba(texts)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)


def test_compress_records_lineage_to_parent_digest(text_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(
        text_package,
        output_dir=tmp_path / "out",
        steps=["onnx", "quantize-dynamic"],
        examples=text_examples(),
    )
    first, second = result.manifests
    assert first["lineage"]["parent"]["digest"] == package_digest(read_manifest(text_package))
    assert first["lineage"]["transformation"] == "onnx-export"
    assert second["lineage"]["parent"]["path"] == str(result.packages[0].resolve())
    assert second["lineage"]["parent"]["digest"] == package_digest(first)
    assert second["lineage"]["settings"]["per_channel"] is True
    assert [p.name for p in result.packages] == ["01-onnx", "02-quantize-dynamic"]


@pytest.mark.parametrize("step", ["quantize-dynamic", "quantize-static"])
def test_onnx_int8_agrees_with_fp32_parent(text_package: Path, tmp_path: Path, step: str) -> None:
    cfg = CompressConfig(onnx=OnnxExportConfig(optimize=step == "quantize-dynamic"))
    result = kiln.compress.run(
        text_package,
        output_dir=tmp_path,
        steps=["onnx", step],
        config=cfg,
        examples=text_examples(),
    )
    manifest = result.manifests[1]
    assert manifest["precision"] == "int8"
    agreement = manifest["metrics"]["agreement"]
    # Untrained logits are nearly uniform, so the quantization error is checked directly.
    assert agreement["max_abs_logit_diff"] < 0.05
    assert agreement["prediction_agreement"] >= 0.99
    assert agreement["accuracy_change"] == pytest.approx(0.0, abs=0.2)
    predictions = kiln.runtime.load(result.packages[1]).predict(["a moving story"])
    assert predictions[0]["label"] in ("neg", "pos")


def test_onnx_int8_is_smaller_than_fp32(text_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(
        text_package,
        output_dir=tmp_path,
        steps=["onnx", "quantize-dynamic"],
        examples=text_examples(),
    )
    fp32, int8 = (p / "model.onnx" for p in result.packages)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def test_onnx_int8_image_agrees_with_fp32(image_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(
        image_package,
        output_dir=tmp_path,
        steps=["onnx", "quantize-static"],
        config=CompressConfig(onnx=OnnxExportConfig(optimize=False)),
        examples=image_examples(),
    )
    agreement = result.manifests[1]["metrics"]["agreement"]
    assert agreement["max_abs_logit_diff"] < 0.05


def test_torch_int8_reloads_in_fresh_process(text_package: Path, tmp_path: Path) -> None:
    result = kiln.compress.run(text_package, output_dir=tmp_path, steps=["quantize-torch"], examples=text_examples())
    manifest = result.manifests[0]
    assert manifest["precision"] == "int8"
    assert manifest["metrics"]["agreement"]["max_abs_logit_diff"] < 0.05
    assert any("torch.ao.quantization" in note for note in manifest["notes"])
    fresh = _predict_in_fresh_process(result.packages[0], ["a moving story"])
    in_process = kiln.runtime.load(result.packages[0]).predict_proba(["a moving story"])
    np.testing.assert_allclose(fresh, in_process, atol=1e-6)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cast_writes_half_precision_weights(text_package: Path, tmp_path: Path, dtype: str) -> None:
    cfg = CompressConfig.model_validate({"cast": {"dtype": dtype}})
    result = kiln.compress.run(text_package, output_dir=tmp_path, steps=["cast"], config=cfg, examples=text_examples())
    parent_size = (text_package / "model.safetensors").stat().st_size
    child_size = (result.packages[0] / "model.safetensors").stat().st_size
    assert child_size < 0.6 * parent_size
    assert result.manifests[0]["precision"] == dtype
    assert result.manifests[0]["metrics"]["agreement"]["max_abs_logit_diff"] < 0.05


@pytest.mark.parametrize("target", [0.3, 0.8])
def test_sparsity_reaches_target(image_package: Path, tmp_path: Path, target: float) -> None:
    cfg = CompressConfig(sparsity=SparsityConfig(target=target))
    result = kiln.compress.run(
        image_package,
        output_dir=tmp_path,
        steps=["sparsity"],
        config=cfg,
        examples=image_examples(),
    )
    reached = result.manifests[0]["metrics"]["sparsity"]["reached"]
    assert reached == pytest.approx(target, abs=0.01)
    from safetensors.numpy import load_file

    weights = load_file(str(result.packages[0] / "model.safetensors"))
    matrices = [v for k, v in weights.items() if k.endswith("weight") and v.ndim >= 2]
    zeros = sum(int((m == 0).sum()) for m in matrices) / sum(m.size for m in matrices)
    assert zeros == pytest.approx(target, abs=0.01)


def test_prune_removes_heads_and_neurons_and_reloads(text_package: Path, tmp_path: Path) -> None:
    cfg = CompressConfig(prune=PruneConfig(heads_fraction=0.5, ffn_fraction=0.25))
    result = kiln.compress.run(text_package, output_dir=tmp_path, steps=["prune"], config=cfg, examples=text_examples())
    manifest = result.manifests[0]
    stats = manifest["metrics"]["pruning"]
    assert (stats["heads_before"], stats["heads_after"]) == (4, 2)
    assert (stats["ffn_neurons_before"], stats["ffn_neurons_after"]) == (1024, 768)
    assert stats["parameters_after"] < stats["parameters_before"]
    assert manifest["architecture"]["heads_per_layer"] == [1, 1]
    assert manifest["architecture"]["ffn_sizes"] == [384, 384]
    pruned_size = (result.packages[0] / "model.safetensors").stat().st_size
    assert pruned_size < (text_package / "model.safetensors").stat().st_size
    probs = _predict_in_fresh_process(result.packages[0], ["a moving story"])
    assert probs.shape == (1, 2)


def test_pruned_package_exports_to_onnx_with_fused_attention(text_package: Path, tmp_path: Path) -> None:
    import onnx

    cfg = CompressConfig(prune=PruneConfig(heads_fraction=0.25, ffn_fraction=0.25))
    result = kiln.compress.run(
        text_package, output_dir=tmp_path, steps=["prune", "onnx"], config=cfg, examples=text_examples()
    )
    heads = result.manifests[0]["architecture"]["heads_per_layer"]
    assert sorted(heads) == [1, 2]  # the layers keep different head counts
    assert result.manifests[1]["metrics"]["parity"]["max_abs_logit_diff"] <= 1e-4
    assert result.manifests[1]["architecture"]["fused_operators"]["Attention"] == 2
    graph = onnx.load(str(result.packages[1] / "model.onnx")).graph
    fused = [n for n in graph.node if n.op_type == "Attention"]
    counts = [next(a.i for a in n.attribute if a.name == "num_heads") for n in fused]
    assert counts == heads


def test_compress_refuses_folder_that_is_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package"):
        kiln.compress.run(tmp_path, output_dir=tmp_path / "out", steps=["onnx"], examples=text_examples())


def test_compress_refuses_unknown_step(text_package: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="unknown compression step"):
        kiln.compress.run(text_package, output_dir=tmp_path, steps=["zip"], examples=text_examples())


def test_compress_refuses_to_quantize_int8_package(text_package: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="already 'int8'"):
        kiln.compress.run(
            text_package,
            output_dir=tmp_path / "out",
            steps=["onnx", "quantize-dynamic", "quantize-dynamic"],
            examples=text_examples(),
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "01-onnx",
        "02-quantize-dynamic",
    ]


def test_compress_refuses_onnx_quantization_of_torch_package(text_package: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="add the onnx step before it"):
        kiln.compress.run(text_package, output_dir=tmp_path, steps=["quantize-dynamic"], examples=text_examples())


def test_static_quantization_refuses_empty_calibration_set(text_package: Path, tmp_path: Path) -> None:
    examples = Examples(eval_inputs=SENTENCES_LABELLED[0], eval_labels=None, train_inputs=[], train_labels=None)
    cfg = CompressConfig(onnx=OnnxExportConfig(optimize=False))
    with pytest.raises(CompressError, match="calibration set is empty"):
        kiln.compress.run(
            text_package,
            output_dir=tmp_path / "out",
            steps=["onnx", "quantize-static"],
            config=cfg,
            examples=examples,
        )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["01-onnx"]


def test_prune_refuses_cnn_package(image_package: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="structured pruning supports transformer"):
        kiln.compress.run(image_package, output_dir=tmp_path, steps=["prune"], examples=image_examples())


def test_compress_without_recipe_data_says_what_is_missing(text_package: Path, tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="no recipe with data"):
        kiln.compress.run(text_package, output_dir=tmp_path, steps=["onnx"])


def test_cli_compress_with_recipe_data_writes_packages(image_package: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "digits.yaml"
    recipe.write_text("name: digits\ndata:\n  dataset: digits\n")
    proc = _kiln(
        "compress",
        str(image_package),
        "--recipe",
        str(recipe),
        "--steps",
        "onnx,quantize-dynamic",
        "--output",
        str(tmp_path / "out"),
        "eval_samples=64",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["transformation"] for line in lines] == ["onnx-export", "quantize-dynamic"]
    agreement = lines[1]["metrics"]["agreement"]
    assert agreement["n_inputs"] == 64
    assert "accuracy_change" in agreement


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "onnx,zip"], "unknown compression step"),
        (["--steps", "onnx", "quantize.per_channel=maybe"], "per_channel"),
    ],
)
def test_cli_compress_bad_input_exits_2(text_package: Path, tmp_path: Path, args: list[str], message: str) -> None:
    proc = _kiln("compress", str(text_package), "--output", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def _kiln(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from kiln.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def _predict_in_fresh_process(package: Path, texts: list[str]) -> np.ndarray:
    code = (
        "import json, sys, kiln.runtime; "
        "p = kiln.runtime.load(sys.argv[1]); "
        "print(json.dumps(p.predict_proba(json.loads(sys.argv[2])).tolist()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(package), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return np.array(json.loads(proc.stdout.splitlines()[-1]))


def test_onnx_and_int8_text_packages_output_the_pooled_embedding_like_torch(
    text_package: Path, tmp_path: Path
) -> None:
    result = kiln.compress.run(
        text_package, output_dir=tmp_path, steps=["onnx", "quantize-dynamic"], examples=text_examples()
    )
    texts = ["short", "a much longer sentence with many more words than the first one has"]
    torch_logits, torch_emb = kiln.runtime.load_classifier(text_package, device="cpu").logits_and_embedding(texts)
    onnx_logits, onnx_emb = kiln.runtime.load_classifier(result.packages[0]).logits_and_embedding(texts)
    _, int8_emb = kiln.runtime.load_classifier(result.packages[1]).logits_and_embedding(texts)
    assert torch_emb is not None and onnx_emb is not None and int8_emb is not None
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
    np.testing.assert_allclose(onnx_emb, torch_emb, atol=1e-4)
    assert int8_emb.shape == torch_emb.shape
    cosine = (int8_emb * torch_emb).sum(1) / np.linalg.norm(int8_emb, axis=1) / np.linalg.norm(torch_emb, axis=1)
    assert cosine.min() > 0.95
