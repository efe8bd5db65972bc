"""PyTorch int8 packages: int8 weights stored in safetensors, rebuilt as dynamic-quantized Linear.

The weights file holds, for each quantized ``nn.Linear`` called ``name``, the tensors
``name.weight_int8`` (int8), ``name.weight_scale`` (float64, one per output row when per-channel)
``name.weight_zero_point`` (int64) and ``name.bias`` (float32); everything else stays float.
Loading builds the float model, quantizes the listed modules with
``torch.ao.quantization.quantize_dynamic`` and installs the stored int8 weights exactly, so the
package needs no pickle. ``torch.ao.quantization`` is deprecated in favour of torchao
(https://github.com/pytorch/ao/issues/2259); Kiln uses it because torchao's current wheels do not
load their native extensions under Python 3.11 here and, once installed, are imported by
transformers on every model build.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.errors import PackageError

TORCH_INT8_METHOD = "torch-ao-dynamic-int8"


def quantize_linear_dynamic(model: nn.Module, *, per_channel: bool) -> nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations at run time)."""
    return _quantize(model, {nn.Linear}, per_channel=per_channel)


def int8_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A safetensors-ready state of a dynamic-quantized model, and the quantized module names."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    state: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, DynamicLinear):
            weight, bias = module._weight_bias()
            quantized.append(name)
            state[f"{name}.weight_int8"] = weight.int_repr().contiguous()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                scale = weight.q_per_channel_scales().double()
                zero = weight.q_per_channel_zero_points().long()
            else:
                scale = torch.tensor([weight.q_scale()], dtype=torch.float64)
                zero = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
            state[f"{name}.weight_scale"] = scale.contiguous()
            state[f"{name}.weight_zero_point"] = zero.contiguous()
            if bias is not None:
                state[f"{name}.bias"] = bias.detach().float().contiguous()
    prefixes = tuple(f"{n}." for n in quantized)
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.startswith(prefixes):
            state[key] = value.detach().cpu().contiguous()
    return state, quantized


def quantization_entry(model: nn.Module) -> dict[str, Any] | None:
    """The manifest's ``architecture.quantization`` of a dynamic-int8 model; None for a float one."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, DynamicLinear)]
    if not modules:
        return None
    weight, _ = modules[0][1]._weight_bias()
    return {
        "method": TORCH_INT8_METHOD,
        "per_channel": weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric),
        "modules": [name for name, _ in modules],
    }


def load_int8_model(
    model: nn.Module, state: dict[str, torch.Tensor], quantization: dict[str, Any], folder: Path
) -> nn.Module:
    """Install a stored int8 state into a freshly built float ``model`` (see module docstring)."""
    if quantization.get("method") != TORCH_INT8_METHOD:
        raise PackageError(f"{folder}: unknown quantization method {quantization.get('method')!r}")
    names: list[str] = list(quantization["modules"])
    prefixes = tuple(f"{n}." for n in names)
    float_state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    missing, unexpected = model.load_state_dict(float_state, strict=False)
    real_missing = [
        k for k in missing if not k.startswith(prefixes) and not k.endswith("position_ids")
    ]
    if real_missing or unexpected:
        raise PackageError(
            f"{folder}: weights do not match the architecture "
            f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.eval()
    qmodel = _quantize(model, set(names), per_channel=bool(quantization["per_channel"]))
    modules = dict(qmodel.named_modules())
    for name in names:
        try:
            int8 = state[f"{name}.weight_int8"]
            scale = state[f"{name}.weight_scale"]
            zero = state[f"{name}.weight_zero_point"]
        except KeyError as exc:
            raise PackageError(f"{folder}: int8 weights of {name} are missing ({exc})") from None
        if scale.numel() == 1:
            weight = torch._make_per_tensor_quantized_tensor(int8, float(scale), int(zero))
        else:
            weight = torch._make_per_channel_quantized_tensor(int8, scale, zero, 0)
        modules[name].set_weight_bias(weight, state.get(f"{name}.bias"))
    return qmodel


def _quantize(model: nn.Module, spec: set[Any], *, per_channel: bool) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        # Deprecation of torch.ao.quantization is recorded in the package's notes instead.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch.ao.quantization.quantize_dynamic(
            model, dict.fromkeys(spec, qconfig), dtype=torch.qint8
        )
