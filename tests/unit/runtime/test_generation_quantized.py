"""int8 text-generation packages: written by write_generation_package, rebuilt by load_generator."""

from pathlib import Path
from typing import Any

import pytest
import torch

from kiln.errors import PackageError
from kiln.runtime.generation import load_generator, write_generation_package
from kiln.runtime.package import read_manifest
from kiln.runtime.quantized import (
    FullRangeDynamicLinear,
    PerTokenDynamicLinear,
    has_int8_dot_product,
    quantize_linear_dynamic,
)
from tests.helpers import tiny_generation_package

pytestmark = pytest.mark.timeout(120)


def write_int8(
    parent: Path, dest: Path, *, precision: str = "int8", quantize: bool = True, per_token: bool = False
) -> dict[str, Any]:
    generator = load_generator(parent, device="cpu")
    manifest = read_manifest(parent)
    full_range = has_int8_dot_product()
    model = (
        quantize_linear_dynamic(generator.model, per_channel=True, full_range=full_range, per_token=per_token)
        if quantize
        else generator.model
    )
    fields = {k: manifest[k] for k in ("name", "preprocessing", "generation", "lineage", "metrics", "recipe")}
    return write_generation_package(
        dest,
        model=model,
        tokenizer_file=parent / "tokenizer.json",
        chat_template=generator.chat_template,
        manifest=fields,
        precision=precision,
    )


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("int8")
    parent = tiny_generation_package(folder / "fp32")
    write_int8(parent, folder / "int8")
    return parent, folder / "int8"


@pytest.fixture(scope="module")
def per_token(packages: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("int8-per-token") / "int8"
    write_int8(packages[0], dest, per_token=True)
    return dest


def decoded_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Each position's logits from a prefill of the first token, then one token per cached step."""
    with torch.inference_mode():
        out = model(input_ids=ids[:, :1], use_cache=True)
        logits = [out.logits[:, -1]]
        for position in range(1, ids.shape[1]):
            out = model(input_ids=ids[:, position : position + 1], cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1)


def test_int8_package_reloads_the_quantized_model_exactly(packages: tuple[Path, Path]) -> None:
    parent, int8 = packages
    in_memory = quantize_linear_dynamic(
        load_generator(parent, device="cpu").model, per_channel=True, full_range=has_int8_dot_product()
    )
    loaded = load_generator(int8)
    assert loaded.manifest["precision"] == "int8"
    assert loaded.manifest["architecture"]["quantization"]["modules"][-1] == "lm_head"
    # 8-bit activations where the CPU has int8 dot products (VNNI, AMX); fbgemm's 7 elsewhere.
    assert isinstance(loaded.model.lm_head, FullRangeDynamicLinear) == has_int8_dot_product()
    ids = torch.tensor([loaded.tokenizer.encode("the cat sat on the mat").ids])
    with torch.inference_mode():
        assert torch.equal(loaded.model(input_ids=ids).logits, in_memory(input_ids=ids).logits)


def test_int8_package_generates_like_its_quantized_model(packages: tuple[Path, Path]) -> None:
    parent, int8 = packages
    fp32 = load_generator(parent, device="cpu")
    loaded = load_generator(int8)
    [answer] = loaded.generate(["a dog ran"], max_new_tokens=8)
    fp32.model = quantize_linear_dynamic(fp32.model, per_channel=True, full_range=has_int8_dot_product())
    assert fp32.generate(["a dog ran"], max_new_tokens=8)[0].token_ids == answer.token_ids


def test_per_token_int8_package_reloads_with_per_token_scales(packages: tuple[Path, Path], per_token: Path) -> None:
    in_memory = quantize_linear_dynamic(
        load_generator(packages[0], device="cpu").model,
        per_channel=True,
        full_range=has_int8_dot_product(),
        per_token=True,
    )
    loaded = load_generator(per_token)
    assert loaded.manifest["architecture"]["quantization"]["per_token_activations"] is True
    assert isinstance(loaded.model.lm_head, PerTokenDynamicLinear)
    ids = torch.tensor([loaded.tokenizer.encode("the cat sat on the mat").ids])
    with torch.inference_mode():
        assert torch.equal(loaded.model(input_ids=ids).logits, in_memory(input_ids=ids).logits)


def test_per_token_int8_scores_a_row_as_decoding_quantizes_its_tokens(per_token: Path) -> None:
    # A scored row (many tokens per call) and decoding (one token per call) quantize each token
    # alike, so the perplexity measured on rows is that of the answers the package generates.
    loaded = load_generator(per_token)
    ids = torch.tensor([loaded.tokenizer.encode("the cat sat on the mat and the dog ran to the park").ids])
    with torch.inference_mode():
        whole = loaded.model(input_ids=ids).logits
    assert torch.allclose(whole, decoded_logits(loaded.model, ids), atol=1e-4)


def test_per_token_int8_answers_do_not_depend_on_the_batch(per_token: Path) -> None:
    loaded = load_generator(per_token)
    prompts = ["a dog ran", "the cat sat on the mat and looked at"]
    batched = loaded.generate(prompts, max_new_tokens=8)
    alone = [loaded.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert [a.token_ids for a in batched] == [a.token_ids for a in alone]


def test_int8_package_refuses_a_gpu_device(packages: tuple[Path, Path]) -> None:
    with pytest.raises(PackageError, match="runs on CPU only, not on cuda"):
        load_generator(packages[1], device="cuda")


@pytest.mark.parametrize(("precision", "quantize"), [("int8", False), ("fp32", True)])
def test_precision_int8_goes_with_int8_layers_only(
    packages: tuple[Path, Path], tmp_path: Path, precision: str, quantize: bool
) -> None:
    with pytest.raises(ValueError, match="precision int8 goes with dynamic int8 Linear layers only"):
        write_int8(packages[0], tmp_path / "bad", precision=precision, quantize=quantize)
    assert not (tmp_path / "bad").exists()
