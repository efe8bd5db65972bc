"""int8 text-generation packages: written by write_generation_package, rebuilt by load_generator."""

from pathlib import Path
from typing import Any

import pytest
import torch

from kiln.errors import PackageError
from kiln.runtime.generation import load_generator, write_generation_package
from kiln.runtime.package import read_manifest
from kiln.runtime.quantized import FullRangeDynamicLinear, has_int8_dot_product, quantize_linear_dynamic
from tests.helpers import tiny_generation_package

pytestmark = pytest.mark.timeout(120)


def write_int8(parent: Path, dest: Path, *, precision: str = "int8", quantize: bool = True) -> dict[str, Any]:
    generator = load_generator(parent, device="cpu")
    manifest = read_manifest(parent)
    full_range = has_int8_dot_product()
    model = (
        quantize_linear_dynamic(generator.model, per_channel=True, full_range=full_range)
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
