"""SmoothQuant (Xiao et al. 2023, arXiv:2211.10438): move activation outliers into the weights.

Dynamic int8 quantizes a Linear layer's input with one scale per call, so the few channels of a
language model's hidden state that run 100x larger than the rest leave the others a handful of
levels. For the layers that read one input, with ``a_j`` the largest activation of input channel
``j`` over calibration text and ``w_j`` the largest weight of that column over the layers,
``s_j = a_j ** alpha / w_j ** (1 - alpha)``: the input is divided by ``s`` where it is made (the
RMSNorm's weight; the up projection's rows for the down projection, since SwiGLU multiplies by
them) and the columns multiplied by it. The fp32 model computes the same function; its int8
copy loses much less. Applies to Llama-style decoder layers (``input_layernorm`` -> q/k/v,
``post_attention_layernorm`` -> gate/up, up -> down); other layouts are left as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# Rows per calibration forward pass.
_BATCH_ROWS = 8


def smooth_activations(model: Any, rows: Sequence[Sequence[int]], *, alpha: float) -> int:
    """Rescale ``model`` in place for int8 (its fp32 function unchanged); return the layers done.

    Args:
        model: a transformers causal LM.
        rows: token ids of calibration text (the activations' ranges are read on them).
        alpha: migration strength, 0 (leave activations) to 1 (move everything into weights).
    """
    import torch

    layers = [layer for layer in getattr(model.get_decoder(), "layers", []) if _is_llama_layer(layer)]
    if not layers or not rows:
        log.info("no Llama-style decoder layers or no calibration text: activations left as they are")
        return 0
    peaks = _input_peaks(model, [m for layer in layers for m in _readers(layer)], rows)
    with torch.no_grad():
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            for norm, linears in (
                (layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
                (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
            ):
                scale = _scales(peaks[linears[0]], linears, alpha)
                norm.weight.div_(scale)
                for linear in linears:
                    linear.weight.mul_(scale)
            scale = _scales(peaks[mlp.down_proj], [mlp.down_proj], alpha)
            mlp.up_proj.weight.div_(scale[:, None])
            if mlp.up_proj.bias is not None:
                mlp.up_proj.bias.div_(scale)
            mlp.down_proj.weight.mul_(scale)
    return len(layers)


def _readers(layer: Any) -> list[Any]:
    """The first Linear reading each smoothed input: attention's, the MLP's and the down projection's."""
    return [layer.self_attn.q_proj, layer.mlp.gate_proj, layer.mlp.down_proj]


def _input_peaks(model: Any, modules: list[Any], rows: Sequence[Sequence[int]]) -> dict[Any, Any]:
    """The largest absolute input of each channel of ``modules`` over the calibration rows."""
    import torch

    from kiln.compress.lm_distill import right_padded

    peaks: dict[Any, torch.Tensor] = {}

    def record(module: Any, args: tuple[Any, ...], _output: Any) -> None:
        peak = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
        peaks[module] = torch.maximum(peaks[module], peak) if module in peaks else peak

    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), _BATCH_ROWS):
                chunk = [list(r) for r in rows[start : start + _BATCH_ROWS]]
                ids, attention, _ = right_padded(chunk, [[1] * len(r) for r in chunk], torch.device("cpu"))
                model(input_ids=ids, attention_mask=attention)
    finally:
        for hook in hooks:
            hook.remove()
    return peaks


def _scales(peak: Any, linears: list[Any], alpha: float) -> Any:
    """``s_j = a_j ** alpha / w_j ** (1 - alpha)``, floored away from zero."""
    import torch

    weight_peak = torch.stack([linear.weight.abs().amax(dim=0) for linear in linears]).amax(dim=0).float()
    floor = 1e-5
    scale = peak.clamp(min=floor).pow(alpha) / weight_peak.clamp(min=floor).pow(1 - alpha)
    return scale.clamp(min=floor).to(linears[0].weight.dtype)


def _is_llama_layer(layer: Any) -> bool:
    names = (
        "input_layernorm",
        "post_attention_layernorm",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    for name in names:
        try:
            layer.get_submodule(name)
        except AttributeError:
            return False
    return True
