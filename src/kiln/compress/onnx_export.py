"""Export a PyTorch package to ONNX with dynamic batch (and sequence) axes, then check parity.

The TorchScript-tracing exporter is the default: on these models it exports in a fraction of a
second and ONNX Runtime's transformer optimiser fuses its BERT graph completely (embedding
LayerNorm, attention, SkipLayerNorm, bias-GELU). HF attention is switched to the eager
implementation for export because the SDPA graph is not matched by the attention fusion.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from kiln.compress.checks import compare_predictions
from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import child_package
from kiln.config.schema import OnnxExportConfig
from kiln.runtime.onnx_engine import EMBEDDING_OUTPUT, ONNX_NAME

log = logging.getLogger(__name__)

TEXT_INPUTS = ("input_ids", "attention_mask")
IMAGE_INPUTS = ("pixel_values",)


def export_onnx(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: OnnxExportConfig,
    examples: Examples,
) -> dict[str, Any]:
    """Write an ``onnx`` package exported from a fp32 ``torch`` package; return its manifest.

    Raises:
        CompressError: the parent is not a fp32 torch package, or the exported graph's logits
            differ from PyTorch's by more than ``cfg.parity_atol``.
    """
    import kiln.runtime
    from kiln.runtime.weights import load_torch_model

    if parent_manifest.get("format") != "torch" or parent_manifest.get("precision") != "fp32":
        raise CompressError(
            f"{parent}: onnx export needs a fp32 torch package, got format "
            f"{parent_manifest.get('format')!r} precision {parent_manifest.get('precision')!r}"
        )
    arch = parent_manifest["architecture"]
    if "quantization" in arch:
        raise CompressError(f"{parent}: cannot export a PyTorch int8 package to ONNX")
    model = load_torch_model(parent, parent_manifest)
    parent_predictor = kiln.runtime.load_classifier(parent, device="cpu", verify=False)
    sample = parent_predictor.preprocessor(list(examples.eval_inputs[:2]))
    input_names = TEXT_INPUTS if arch["family"] == "hf" else IMAGE_INPUTS
    settings = cfg.model_dump(mode="json")
    with child_package(parent, parent_manifest, dest, transformation="onnx-export", settings=settings) as child:
        onnx_path = child.staging / ONNX_NAME
        _export(model, {k: sample[k] for k in input_names}, onnx_path, cfg)
        fused: dict[str, int] = {}
        optimized = cfg.optimize and arch["family"] == "hf"
        if optimized:
            fused = _optimize_bert(onnx_path, model.config, is_pruned="heads_per_layer" in arch)
        child.manifest.update(
            format="onnx",
            precision="fp32",
            architecture={
                "family": "onnx",
                "file": ONNX_NAME,
                "source_family": arch["family"],
                "inputs": list(input_names),
                "opset": cfg.opset,
                "optimized": optimized,
                # Operators ONNX Runtime's transformer optimiser fused (Attention, SkipLayerNorm...).
                "fused_operators": fused,
            },
        )
        child.finalize()
        onnx_predictor = kiln.runtime.load_classifier(child.staging, device="cpu", verify=False)
        parity = compare_predictions(parent_predictor, onnx_predictor, examples.eval_inputs, examples.eval_labels)
        parity["atol"] = cfg.parity_atol
        if parity["max_abs_logit_diff"] > cfg.parity_atol:
            raise CompressError(
                f"{parent}: exported ONNX graph differs from PyTorch by "
                f"{parity['max_abs_logit_diff']:.2e} in logits (allowed {cfg.parity_atol:.0e})"
            )
        child.manifest["metrics"] = {"parity": parity}
        return child.finalize()


def _export(model: Any, sample: dict[str, Any], path: Path, cfg: OnnxExportConfig) -> None:
    import torch

    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    wrapper = _logits_module(model)
    is_text = "input_ids" in sample
    args = tuple(torch.from_numpy(v) for v in sample.values())
    names = list(sample)
    seq_axes = {0: "batch", 1: "sequence"}
    kwargs: dict[str, Any]
    if cfg.exporter == "dynamo":
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes = {n: ({0: batch, 1: seq} if n in TEXT_INPUTS else {0: batch}) for n in names}
        kwargs = {"dynamic_shapes": shapes, "dynamo": True}
    else:
        axes = {n: (seq_axes if n in TEXT_INPUTS else {0: "batch"}) for n in names}
        outputs = {"logits": {0: "batch"}, EMBEDDING_OUTPUT: {0: "batch"}} if is_text else {"logits": {0: "batch"}}
        kwargs = {"dynamic_axes": dict(axes, **outputs), "dynamo": False}
    with warnings.catch_warnings(), torch.no_grad():
        # Tracing warnings about shape-dependent Python branches in transformers' masking code
        # are harmless here: parity on real inputs of other lengths is checked right after.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=["logits", EMBEDDING_OUTPUT] if is_text else ["logits"],
            opset_version=cfg.opset,
            **kwargs,
        )


def _optimize_bert(path: Path, config: Any, *, is_pruned: bool) -> dict[str, int]:
    """Run ONNX Runtime's BERT optimiser in place; return the count of each fused operator."""
    from onnxruntime.transformers import optimizer

    fusion_log = logging.getLogger("fusion_attention")
    level = fusion_log.level
    if is_pruned:
        # Pruned layers keep different numbers of heads, so no single num_heads fits them all;
        # the optimiser reads each layer's count from its Q reshape once the graph spells it out.
        _pin_head_counts(path, int(config.hidden_size) // int(config.num_attention_heads))
        # It then warns, for every layer, that heads x head size differs from the model width,
        # which is what pruning heads means; the fused count is logged below instead.
        fusion_log.setLevel(logging.ERROR)
    try:
        model = optimizer.optimize_model(
            str(path),
            model_type="bert",
            num_heads=0 if is_pruned else int(config.num_attention_heads),
            hidden_size=0 if is_pruned else int(config.hidden_size),
            opt_level=None,
        )
    finally:
        fusion_log.setLevel(level)
    stats = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("ONNX Runtime fusion: %s", stats)
    model.save_model_to_file(str(path))
    return stats


def _pin_head_counts(path: Path, head_size: int) -> int:
    """Write each attention layer's head count into its ``(batch, seq, -1, head_size)`` reshapes.

    transformers reshapes Q, K and V to ``(*input_shape, -1, head_size)``; the ``-1`` hides the
    head count from ONNX Runtime's attention fusion. The count is the projection's output width
    divided by ``head_size``, read from the MatMul weight that feeds the reshape. Each rewritten
    reshape gets its own shape Concat, so no other reshape sharing one changes. Returns how many
    reshapes were pinned.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def source(name: str) -> str:
        # The exporter shares identical initializers through Identity nodes.
        while name not in initializers and (node := producer.get(name)) is not None and node.op_type == "Identity":
            name = node.input[0]
        return name

    def value(name: str) -> Any:
        name = source(name)
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        return constants.get(name)

    def is_constant(name: str) -> bool:
        name = source(name)
        return name in initializers or name in constants

    def projection_width(name: str) -> int | None:
        node = producer.get(name)
        while node is not None and node.op_type in ("Add", "MatMul"):
            if node.op_type == "MatMul":
                weight = value(node.input[1])
                return int(weight.shape[1]) if weight is not None and weight.ndim == 2 else None
            inputs = [i for i in node.input if not is_constant(i)]
            node = producer.get(inputs[0]) if len(inputs) == 1 else None
        return None

    nodes, pinned = [], 0
    for node in graph.node:
        concat = producer.get(node.input[1]) if node.op_type == "Reshape" else None
        if concat is not None and concat.op_type == "Concat" and len(concat.input) == 4:
            heads, size = value(concat.input[2]), value(concat.input[3])
            width = projection_width(node.input[0])
            if (
                heads is not None
                and size is not None
                and heads.size == size.size == 1
                and int(heads.reshape(-1)[0]) == -1
                and int(size.reshape(-1)[0]) == head_size
                and width  # a layer with no heads left keeps its -1
                and width % head_size == 0
            ):
                count = f"kiln_num_heads_{width // head_size}"
                if count not in initializers:
                    tensor = numpy_helper.from_array(np.full(heads.shape, width // head_size, heads.dtype), count)
                    graph.initializer.append(tensor)
                    initializers[count] = tensor
                shape = f"{node.input[1]}_kiln_{pinned}"
                inputs = [concat.input[0], concat.input[1], count, concat.input[3]]
                nodes.append(helper.make_node("Concat", inputs, [shape], axis=0, name=f"kiln_heads_concat_{pinned}"))
                node.input[1] = shape
                pinned += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return pinned


def _logits_module(model: Any) -> Any:
    """Wrap a model so that export sees positional tensor inputs, and ``logits`` out (a text model
    also outputs ``embedding``, its last layer's mean over real tokens, which out-of-scope scores read)."""
    import torch
    from transformers import PreTrainedModel

    from kiln.runtime.architectures import masked_mean

    is_hf = isinstance(model, PreTrainedModel)

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *inputs: Any) -> Any:
            if is_hf:
                input_ids, attention_mask = inputs
                out = self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
                return out.logits, masked_mean(out.hidden_states[-1], attention_mask)
            return self.inner(*inputs)

    return LogitsOnly().eval()
