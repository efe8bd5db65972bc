"""int8 quantization (ONNX Runtime dynamic and static QDQ, PyTorch dynamic) and fp16/bf16 casts.

Every step reports, against its parent on real inputs, the largest logit difference, the
prediction agreement and (with labels) the accuracy change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kiln.compress.checks import check_against_parent
from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import ChildPackage, child_package
from kiln.config.schema import CastConfig, QuantizeConfig
from kiln.runtime.onnx_engine import ONNX_NAME

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
# ONNX shape inference cannot type the outputs of ONNX Runtime's fused contrib ops (Attention,
# SkipLayerNormalization), so the quantizer is told that untyped tensors are float.
_FUSED_GRAPH_OPTIONS = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT


def quantize_onnx_dynamic(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: QuantizeConfig,
    examples: Examples,
) -> dict[str, Any]:
    """ONNX Runtime dynamic int8: int8 weights, activation scales computed per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _require(parent, parent_manifest, fmt="onnx", step="quantize-dynamic")
    settings = {"per_channel": cfg.per_channel, "weight_type": "int8"}
    with child_package(
        parent, parent_manifest, dest, transformation="quantize-dynamic", settings=settings
    ) as child:
        quantize_dynamic(
            str(parent / ONNX_NAME),
            str(child.staging / ONNX_NAME),
            per_channel=cfg.per_channel,
            weight_type=QuantType.QInt8,
            extra_options=_FUSED_GRAPH_OPTIONS,
        )
        return _finish_onnx(child, parent, parent_manifest, cfg, examples)


def quantize_onnx_static(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: QuantizeConfig,
    examples: Examples,
) -> dict[str, Any]:
    """ONNX Runtime static int8 in QDQ format, activation ranges calibrated on training inputs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    import kiln.runtime

    _require(parent, parent_manifest, fmt="onnx", step="quantize-static")
    if parent_manifest["architecture"].get("optimized"):
        # The calibrator must type every activation to place QDQ pairs; shape inference cannot
        # type the outputs of ONNX Runtime's fused contrib ops (Attention, SkipLayerNormalization)
        # on a graph with a dynamic sequence axis. ONNX Runtime fuses the QDQ graph at load time.
        raise CompressError(
            f"{parent}: quantize-static needs an ONNX graph exported without transformer fusion; "
            "export with onnx.optimize=false"
        )
    calibration = list(examples.train_inputs[: cfg.calibration_samples])
    if not calibration:
        raise CompressError("quantize-static: the calibration set is empty (no training inputs)")
    predictor = kiln.runtime.load_classifier(parent, device="cpu", verify=False)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration_method]
    settings = {
        "per_channel": cfg.per_channel,
        "format": "QDQ",
        "calibration_samples": len(calibration),
        "calibration_method": cfg.calibration_method,
        "activation_type": "uint8",
        "weight_type": "int8",
    }
    with child_package(
        parent, parent_manifest, dest, transformation="quantize-static", settings=settings
    ) as child:
        reader = _CalibrationReader(
            predictor, calibration, list(parent_manifest["architecture"]["inputs"])
        )
        quantize_static(
            str(parent / ONNX_NAME),
            str(child.staging / ONNX_NAME),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        )
        return _finish_onnx(child, parent, parent_manifest, cfg, examples)


def quantize_torch_dynamic(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: QuantizeConfig,
    examples: Examples,
) -> dict[str, Any]:
    """PyTorch dynamic int8 of every ``nn.Linear``, stored as int8 + scales in safetensors."""
    from safetensors.torch import save_file

    from kiln.runtime.quantized import (
        TORCH_INT8_METHOD,
        int8_state_dict,
        quantization_entry,
        quantize_linear_dynamic,
    )
    from kiln.runtime.weights import WEIGHTS_NAME, load_torch_model

    _require(parent, parent_manifest, fmt="torch", step="quantize-torch")
    model = load_torch_model(parent, parent_manifest)
    settings = {"per_channel": cfg.per_channel, "method": TORCH_INT8_METHOD}
    with child_package(
        parent, parent_manifest, dest, transformation="quantize-torch", settings=settings
    ) as child:
        if parent_manifest["architecture"]["family"] == "hf":
            cast("PreTrainedModel", model).config.to_json_file(str(child.staging / "config.json"))
        qmodel = quantize_linear_dynamic(model, per_channel=cfg.per_channel)
        state, _ = int8_state_dict(qmodel)
        save_file(state, str(child.staging / WEIGHTS_NAME), metadata={"format": "pt"})
        arch = dict(parent_manifest["architecture"], weights=WEIGHTS_NAME)
        arch["quantization"] = quantization_entry(qmodel)
        child.manifest.update(format="torch", precision="int8", architecture=arch)
        child.notes.append(
            "PyTorch int8 uses torch.ao.quantization.quantize_dynamic, which PyTorch is retiring "
            "in favour of torchao (https://github.com/pytorch/ao/issues/2259)."
        )
        child.finalize()
        child.manifest["metrics"] = {"agreement": _agreement(child, parent, cfg, examples)}
        return child.finalize()


def cast_torch(
    parent: Path, parent_manifest: dict[str, Any], dest: Path, cfg: CastConfig, examples: Examples
) -> dict[str, Any]:
    """Cast a fp32 PyTorch package's weights to fp16 or bf16 (for GPU targets)."""
    from kiln.runtime.weights import load_torch_model, save_torch_model

    _require(parent, parent_manifest, fmt="torch", step="cast")
    import torch

    dtype = TORCH_DTYPES[cfg.dtype]
    model = load_torch_model(parent, parent_manifest).to(getattr(torch, dtype))
    with child_package(
        parent, parent_manifest, dest, transformation="cast", settings=cfg.model_dump(mode="json")
    ) as child:
        arch = {k: v for k, v in parent_manifest["architecture"].items() if k != "weights"}
        arch = save_torch_model(model, child.staging, dict(arch, dtype=dtype))
        child.manifest.update(format="torch", precision=cfg.dtype, architecture=arch)
        child.finalize()
        child.manifest["metrics"] = {
            "agreement": check_against_parent(
                parent, child.staging, examples.eval_inputs, examples.eval_labels
            )
        }
        return child.finalize()


def _require(parent: Path, manifest: dict[str, Any], *, fmt: str, step: str) -> None:
    if manifest.get("precision") != "fp32":
        raise CompressError(
            f"{parent}: {step} needs a fp32 package, this one is already "
            f"{manifest.get('precision')!r}"
        )
    if manifest.get("format") != fmt:
        hint = "; add the onnx step before it" if fmt == "onnx" else ""
        raise CompressError(
            f"{parent}: {step} needs a {fmt} package, got format {manifest.get('format')!r}{hint}"
        )


def _finish_onnx(
    child: ChildPackage,
    parent: Path,
    parent_manifest: dict[str, Any],
    cfg: QuantizeConfig,
    examples: Examples,
) -> dict[str, Any]:
    child.manifest.update(
        format="onnx", precision="int8", architecture=dict(parent_manifest["architecture"])
    )
    child.finalize()
    child.manifest["metrics"] = {"agreement": _agreement(child, parent, cfg, examples)}
    return child.finalize()


def _agreement(
    child: ChildPackage, parent: Path, cfg: QuantizeConfig, examples: Examples
) -> dict[str, Any]:
    result = check_against_parent(parent, child.staging, examples.eval_inputs, examples.eval_labels)
    result["min_agreement"] = cfg.min_agreement
    if result["prediction_agreement"] < cfg.min_agreement:
        raise CompressError(
            f"int8 predictions agree with the parent on {result['prediction_agreement']:.1%} of "
            f"{result['n_inputs']} inputs, below quantize.min_agreement={cfg.min_agreement:.1%}"
        )
    return result


class _CalibrationReader:
    """Feeds one preprocessed training example per call to ONNX Runtime's calibrator."""

    def __init__(self, predictor: Any, inputs: Sequence[Any], names: list[str]) -> None:
        self._inputs = inputs
        self._items = iter(inputs)
        self._predictor = predictor
        self._names = names

    def get_next(self) -> dict[str, Any] | None:
        item = next(self._items, None)
        if item is None:
            return None
        features = self._predictor.preprocessor([item])
        return {name: features[name] for name in self._names}

    def rewind(self) -> None:
        self._items = iter(self._inputs)
