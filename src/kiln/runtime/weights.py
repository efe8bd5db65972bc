"""Save and load PyTorch weights in a package: safetensors plus architecture config, never pickle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from kiln.errors import PackageError
from kiln.runtime.architectures import build_cnn, build_text_classifier, resize_bert_layers
from kiln.runtime.package import packaged_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel

WEIGHTS_NAME = "model.safetensors"


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, ready for safetensors.

    safetensors refuses tensors that share memory; tied weights (a language model's input
    embedding and output head) are one tensor under two names, so the second name gets a copy.
    Loading writes the same values into the one tensor twice.
    """
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        tensors[name] = tensor.clone() if key in seen and tensor.numel() else tensor
        seen.add(key)
    return tensors


def save_torch_model(model: nn.Module, folder: Path, architecture: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights (and HF config) into ``folder``; return the manifest entry."""
    from safetensors.torch import save_file

    if architecture["family"] == "hf":
        cast("PreTrainedModel", model).config.to_json_file(str(folder / "config.json"))
    save_file(state_tensors(model), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return dict(architecture, weights=WEIGHTS_NAME)


def load_torch_model(folder: Path, manifest: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a manifest names and load its safetensors weights (eval mode)."""
    from safetensors.torch import load_file

    arch = manifest["architecture"]
    if arch["family"] == "hf":
        from transformers import AutoConfig

        model = build_text_classifier(AutoConfig.from_pretrained(str(folder)))
        if "heads_per_layer" in arch or "ffn_sizes" in arch:
            resize_bert_layers(
                model, heads_per_layer=arch.get("heads_per_layer"), ffn_sizes=arch.get("ffn_sizes")
            )
    elif arch["family"] == "cnn":
        model = build_cnn(arch["params"])
    else:
        raise PackageError(f"{folder}: unknown architecture family {arch['family']!r}")
    state = load_file(str(packaged_file(folder, manifest, arch["weights"])))
    quantization = arch.get("quantization")
    if quantization is not None:
        from kiln.runtime.quantized import load_int8_model

        return load_int8_model(model, state, quantization, folder)
    if "dtype" in arch:
        model.to(getattr(torch, arch["dtype"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Buffers such as BERT's position_ids may be absent from older checkpoints; real weights
    # must all be there.
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise PackageError(
            f"{folder}: weights do not match the architecture "
            f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.eval()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters in a model."""
    return sum(p.numel() for p in model.parameters())


def pick_device(device: str | None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def write_torch_package(
    dest: str | Path,
    *,
    model: nn.Module,
    architecture: dict[str, Any],
    manifest: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Write a complete torch-format package atomically and return its final manifest.

    Args:
        dest: the package folder to create (replaced atomically if it exists).
        model: the module whose weights to save.
        architecture: ``{"family": "hf"}`` or ``{"family": "cnn", "params": {...}}``.
        manifest: every other manifest field (task, labels, preprocessing, lineage, ...).
        extra_files: files to copy in, by their name inside the package (e.g. tokenizer.json).
    """
    import shutil

    from kiln.runtime.package import finalize_package, staged_package

    with staged_package(dest) as staging:
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
        arch = save_torch_model(model, staging, architecture)
        full = finalize_package(staging, dict(manifest, format="torch", architecture=arch))
    return full
