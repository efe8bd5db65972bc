"""PyTorch int8 packages: int8 weights stored in safetensors, rebuilt as dynamic-quantized Linear.

The weights file holds, for each quantized ``nn.Linear`` called ``name``, the tensors
``name.weight_int8`` (int8), ``name.weight_scale`` (float64, one per output row when per-channel)
``name.weight_zero_point`` (int64) and ``name.bias`` (float32); everything else stays float.
Loading builds the float model, quantizes the listed modules with
``torch.ao.quantization.quantize_dynamic`` and installs the stored int8 weights exactly, so the
package needs no pickle. A manifest with ``per_token_activations`` is rebuilt with
``PerTokenDynamicLinear`` (one activation scale per token); one with ``full_range_activations``
gets 8-bit activations on CPUs with int8 dot products (``FullRangeDynamicLinear`` when the scale
is per call), fbgemm's 7 bits elsewhere. ``torch.ao.quantization`` is deprecated in favour of torchao
(https://github.com/pytorch/ao/issues/2259); Kiln uses it because torchao's current wheels do not
load their native extensions under Python 3.11 here and, once installed, are imported by
transformers on every model build.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from kiln.errors import PackageError

log = logging.getLogger(__name__)

TORCH_INT8_METHOD = "torch-ao-dynamic-int8"


class FullRangeDynamicLinear(DynamicLinear):
    """A dynamic int8 Linear whose activations use all 8 bits rather than fbgemm's default 7.

    fbgemm keeps activations to 7 bits so that AVX2's 16-bit sums of byte products cannot
    saturate; with VNNI (and AMX) the products accumulate in 32 bits, and the eighth bit halves the
    rounding error of activations, which language models' outlier channels make large.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)


class PerTokenDynamicLinear(DynamicLinear):
    """A dynamic int8 Linear with one activation scale per token rather than one per call.

    One token (a decode step at batch 1) goes through fbgemm's kernel, whose per-call scale is
    then a per-token one. Several tokens (a prompt, a scored row, a batch of sequences) are
    quantized row by row (asymmetric, ``levels`` steps from each row's min to max, zero kept
    exact, as fbgemm picks its scale) and multiplied by ``torch._int_mm`` with 32-bit sums, so a
    token with an outlier no longer coarsens every other token's activations (the per-token
    scales of LLM.int8(), Dettmers et al. 2022, arXiv:2208.07339; ZeroQuant, Yao et al. 2022,
    arXiv:2206.01861). ``levels`` is 255 where the CPU has int8 dot products (VNNI, AMX) and 127
    elsewhere, where fbgemm's 16-bit sums need 7-bit activations.
    """

    levels = 255

    def set_weight_bias(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        super().set_weight_bias(w, b)
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale, zero = w.q_per_channel_scales().float(), w.q_per_channel_zero_points()
        else:
            scale = torch.full((w.shape[0],), w.q_scale(), dtype=torch.float32)
            zero = torch.full((w.shape[0],), w.q_zero_point(), dtype=torch.int64)
        weight = w.int_repr()
        if bool(zero.ne(0).any()):
            raise ValueError("per-token int8 Linear needs symmetric weights (zero points 0)")
        self._int8_weight_t = weight.t()  # [in, out] view, as torch._int_mm takes it
        self._weight_sums = weight.sum(dim=1, dtype=torch.int32)  # per output channel, for the zero points
        self._weight_scale = scale
        self._bias = None if b is None else b.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 1:
            y = torch.ops.quantized.linear_dynamic(
                rows, self._packed_params._packed_params, reduce_range=self.levels < 255
            )
        else:
            y = self._per_token(rows.float())
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _per_token(self, rows: torch.Tensor) -> torch.Tensor:
        low = rows.amin(dim=1, keepdim=True).clamp(max=0.0)
        high = rows.amax(dim=1, keepdim=True).clamp(min=0.0)
        scale = ((high - low) / self.levels).clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.round(-low / scale)  # in [0, levels]: the row's zero, exactly representable
        # Shifted by 128 into int8, the range torch._int_mm takes; the shift moves into the zero point.
        quantized = (torch.round(rows / scale) + zero).clamp_(0, self.levels).sub_(128).to(torch.int8)
        sums = torch._int_mm(quantized, self._int8_weight_t)
        sums = sums - (zero - 128).to(torch.int32) * self._weight_sums
        y = sums.float() * scale * self._weight_scale
        return y if self._bias is None else y + self._bias


class PerTokenSevenBitLinear(PerTokenDynamicLinear):
    """``PerTokenDynamicLinear`` with 7-bit activations, for CPUs without int8 dot products."""

    levels = 127


@functools.cache
def has_int8_dot_product() -> bool:
    """Whether this CPU multiplies int8 with 32-bit accumulation (VNNI or AMX; Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def quantize_linear_dynamic(
    model: nn.Module, *, per_channel: bool, full_range: bool = False, per_token: bool = False
) -> nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations at run time).

    ``full_range`` quantizes activations to 8 bits rather than 7; only for CPUs where
    ``has_int8_dot_product()``. ``per_token`` gives each token its own activation scale
    (``PerTokenDynamicLinear``) rather than one per call.
    """
    return _quantize(model, {nn.Linear}, per_channel=per_channel, full_range=full_range, per_token=per_token)


def int8_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A safetensors-ready state of a dynamic-quantized model, and the quantized module names."""
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
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, DynamicLinear)]
    if not modules:
        return None
    weight, _ = modules[0][1]._weight_bias()
    entry: dict[str, Any] = {
        "method": TORCH_INT8_METHOD,
        "per_channel": weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric),
        "modules": [name for name, _ in modules],
    }
    first = modules[0][1]
    if isinstance(first, PerTokenDynamicLinear):
        entry["per_token_activations"] = True
    if isinstance(first, FullRangeDynamicLinear) or getattr(first, "levels", 0) == 255:
        entry["full_range_activations"] = True
    return entry


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
    full_range = bool(quantization.get("full_range_activations", False))
    if full_range and not has_int8_dot_product():
        log.warning("%s: this CPU has no VNNI or AMX; its int8 activations keep 7 bits, not 8", folder)
        full_range = False
    qmodel = _quantize(
        model,
        set(names),
        per_channel=bool(quantization["per_channel"]),
        full_range=full_range,
        per_token=bool(quantization.get("per_token_activations", False)),
    )
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


def _quantize(model: nn.Module, spec: set[Any], *, per_channel: bool, full_range: bool, per_token: bool) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    linear: type[DynamicLinear] | None = None
    if per_token:
        linear = PerTokenDynamicLinear if full_range else PerTokenSevenBitLinear
    elif full_range:
        linear = FullRangeDynamicLinear
    mapping = {nn.Linear: linear} if linear is not None else None
    with warnings.catch_warnings():
        # Deprecation of torch.ao.quantization is recorded in the package's notes instead.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch.ao.quantization.quantize_dynamic(
            model, dict.fromkeys(spec, qconfig), dtype=torch.qint8, mapping=mapping
        )
