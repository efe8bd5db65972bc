"""Structured pruning of BERT-like encoders: remove attention heads and FFN neurons.

Heads and neurons are ranked by gradient-based importance (Michel, Levy & Neubig 2019,
"Are Sixteen Heads Really Better than One?"): a gate of ones multiplies each head's output and
each FFN neuron's activation, and the importance of a unit is the accumulated absolute gradient
of the loss with respect to its gate. Head scores are L2-normalised within each layer (as in
the paper's code) and ranked globally; neurons are ranked within their layer. The matrices are
sliced, so the saved model is smaller; per-layer sizes go into ``architecture.heads_per_layer``
and ``architecture.ffn_sizes``, which ``kiln.runtime.weights.load_torch_model`` applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compress.checks import check_against_parent
from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import child_package
from kiln.config.schema import DistillConfig, PruneConfig


def prune_structured(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: PruneConfig,
    examples: Examples,
    *,
    recovery: DistillConfig | None = None,
) -> dict[str, Any]:
    """Write a package with the least important heads and FFN neurons removed.

    With ``cfg.recovery_epochs`` > 0 the pruned model is then fine-tuned by distillation from
    the unpruned parent, with the loss settings of ``recovery`` (the ``distill`` section).
    """
    import kiln.runtime
    from kiln.runtime.weights import count_parameters, load_torch_model, save_torch_model

    arch = parent_manifest.get("architecture", {})
    if parent_manifest.get("format") != "torch" or parent_manifest.get("precision") != "fp32":
        raise CompressError(f"{parent}: prune needs a fp32 torch package")
    if arch.get("family") != "hf":
        raise CompressError(
            f"{parent}: structured pruning supports transformer text packages, not the {arch.get('family')!r} family"
        )
    inputs = list(examples.train_inputs[: cfg.importance_samples])
    if not inputs:
        raise CompressError("prune: no training inputs to rank heads and neurons with")
    model = load_torch_model(parent, parent_manifest)
    # Head and neuron surgery knows BERT's layer layout (attention.self.query/key/value).
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type != "bert":
        raise CompressError(f"{parent}: structured pruning supports BERT-family encoders, not {model_type!r}")
    predictor = kiln.runtime.load_classifier(parent, device="cpu", verify=False)
    labels = _label_ids(predictor.labels, examples.train_labels, len(inputs))
    head_scores, ffn_scores = importance_scores(
        model, predictor.preprocessor, inputs, labels, cfg.batch_size
    )
    keep_heads = select_heads(head_scores, cfg.heads_fraction)
    keep_neurons = [
        _top(scores, len(scores) - int(round(cfg.ffn_fraction * len(scores))))
        for scores in ffn_scores
    ]
    params_before = count_parameters(model)
    prune_model(model, keep_heads, keep_neurons)
    settings = cfg.model_dump(mode="json")
    recovered = None
    if cfg.recovery_epochs:
        recovered = _recover(
            parent, parent_manifest, model, recovery or DistillConfig(), cfg, examples
        )
        settings["recovery"] = (recovery or DistillConfig()).model_dump(mode="json")
    with child_package(
        parent, parent_manifest, dest, transformation="prune", settings=settings
    ) as child:
        base = {
            k: v for k, v in arch.items() if k not in ("weights", "heads_per_layer", "ffn_sizes")
        }
        base.update(
            heads_per_layer=[len(h) for h in keep_heads], ffn_sizes=[len(n) for n in keep_neurons]
        )
        child.manifest.update(
            format="torch",
            precision="fp32",
            architecture=save_torch_model(model, child.staging, base),
        )
        child.finalize()
        child.manifest["metrics"] = {
            "pruning": {
                "parameters_before": params_before,
                "parameters_after": count_parameters(model),
                "heads_before": int(sum(len(s) for s in head_scores)),
                "heads_after": int(sum(len(h) for h in keep_heads)),
                "ffn_neurons_before": int(sum(len(s) for s in ffn_scores)),
                "ffn_neurons_after": int(sum(len(n) for n in keep_neurons)),
                "kept_heads": [h.tolist() for h in keep_heads],
                "importance_samples": len(inputs),
                "used_labels": examples.train_labels is not None,
            },
            **({"recovery": recovered} if recovered is not None else {}),
            "agreement": check_against_parent(
                parent, child.staging, examples.eval_inputs, examples.eval_labels
            ),
        }
        return child.finalize()


def _recover(
    parent: Path,
    parent_manifest: dict[str, Any],
    model: Any,
    distill_cfg: DistillConfig,
    cfg: PruneConfig,
    examples: Examples,
) -> dict[str, Any]:
    """Recovery fine-tuning: distil the unpruned parent into the pruned model, layer to layer."""
    import kiln.runtime
    from kiln.compress.distill import training_data
    from kiln.compress.distill_loop import distill_model
    from kiln.runtime.preprocessing import TextPreprocessor
    from kiln.runtime.weights import load_torch_model

    teacher = load_torch_model(parent, parent_manifest)
    predictor = kiln.runtime.load_classifier(parent, device="cpu", verify=False)
    assert isinstance(predictor.preprocessor, TextPreprocessor)
    data = training_data(parent_manifest, examples, distill_cfg, predictor)
    n_layers = int(model.config.num_hidden_layers)
    return distill_model(
        teacher,
        model,
        data,
        predictor.preprocessor.collate,
        distill_cfg,
        layer_map=list(range(n_layers)),
        seed=int((parent_manifest.get("recipe") or {}).get("seed", 0)),
        epochs=cfg.recovery_epochs,
    )


def importance_scores(
    model: Any, preprocessor: Any, inputs: Sequence[Any], labels: np.ndarray | None, batch_size: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-layer head and FFN-neuron importance: accumulated |dLoss/dgate| (Michel et al. 2019).

    Without labels the loss is taken against the model's own predictions.
    """
    import torch

    from kiln.runtime.architectures import encoder_layers

    layers = encoder_layers(model)
    head_gates = [
        torch.ones(layer.attention.self.num_attention_heads, requires_grad=True) for layer in layers
    ]
    ffn_gates = [
        torch.ones(layer.intermediate.dense.out_features, requires_grad=True) for layer in layers
    ]
    hooks = []
    for layer, hg, fg in zip(layers, head_gates, ffn_gates, strict=True):
        hooks.append(layer.attention.self.register_forward_hook(_head_gate_hook(hg)))
        hooks.append(layer.intermediate.register_forward_hook(lambda _m, _i, out, g=fg: out * g))
    head_acc = [torch.zeros_like(g) for g in head_gates]
    ffn_acc = [torch.zeros_like(g) for g in ffn_gates]
    model.eval()  # no dropout: importance of the model as it will be used
    try:
        for start in range(0, len(inputs), batch_size):
            features = preprocessor(inputs[start : start + batch_size])
            tensors = {k: torch.from_numpy(v) for k, v in features.items()}
            logits = model(**tensors).logits
            target = (
                torch.from_numpy(labels[start : start + batch_size])
                if labels is not None
                else logits.argmax(dim=1).detach()
            )
            loss = torch.nn.functional.cross_entropy(logits, target)
            grads = torch.autograd.grad(loss, head_gates + ffn_gates)
            for acc, grad in zip(head_acc + ffn_acc, grads, strict=True):
                acc += grad.abs()
    finally:
        for hook in hooks:
            hook.remove()
    heads = [_l2_normalise(a.numpy()) for a in head_acc]
    return heads, [a.numpy() for a in ffn_acc]


def select_heads(scores: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """Indices of the heads to keep in each layer: drop the globally lowest, keep one per layer."""
    total = sum(len(s) for s in scores)
    n_drop = int(round(fraction * total))
    order = sorted((float(s[h]), layer, h) for layer, s in enumerate(scores) for h in range(len(s)))
    remaining = [len(s) for s in scores]
    dropped: set[tuple[int, int]] = set()
    for _, layer, head in order:
        if len(dropped) == n_drop:
            break
        if remaining[layer] > 1:
            dropped.add((layer, head))
            remaining[layer] -= 1
    return [
        np.array([h for h in range(len(s)) if (layer, h) not in dropped], dtype=np.int64)
        for layer, s in enumerate(scores)
    ]


def prune_model(model: Any, keep_heads: list[np.ndarray], keep_neurons: list[np.ndarray]) -> None:
    """Slice each layer's attention and FFN matrices down to the kept heads and neurons."""
    import torch

    from kiln.runtime.architectures import encoder_layers

    for layer, heads, neurons in zip(encoder_layers(model), keep_heads, keep_neurons, strict=True):
        attn = layer.attention.self
        size = attn.attention_head_size
        rows = torch.from_numpy(
            np.concatenate([np.arange(h * size, (h + 1) * size) for h in heads])
        )
        for proj in ("query", "key", "value"):
            setattr(attn, proj, _slice_linear(getattr(attn, proj), rows, dim=0))
        layer.attention.output.dense = _slice_linear(layer.attention.output.dense, rows, dim=1)
        attn.num_attention_heads = len(heads)
        attn.all_head_size = len(heads) * size
        index = torch.from_numpy(neurons)
        layer.intermediate.dense = _slice_linear(layer.intermediate.dense, index, dim=0)
        layer.output.dense = _slice_linear(layer.output.dense, index, dim=1)


def _slice_linear(linear: Any, index: Any, *, dim: int) -> Any:
    import torch

    weight = linear.weight.detach().index_select(dim, index).clone()
    out_features, in_features = weight.shape
    new = torch.nn.Linear(in_features, out_features, bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias.index_select(0, index) if dim == 0 else bias)
    return new


def _head_gate_hook(gate: Any) -> Any:
    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        context, *rest = output  # (batch, seq, heads * head_size)
        batch, seq, width = context.shape
        gated = context.view(batch, seq, len(gate), width // len(gate)) * gate.view(1, 1, -1, 1)
        return (gated.view(batch, seq, width), *rest)

    return hook


def _top(scores: np.ndarray, n_keep: int) -> np.ndarray:
    n_keep = max(1, n_keep)
    return np.sort(np.argsort(-scores, kind="stable")[:n_keep]).astype(np.int64)


def _l2_normalise(scores: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(scores))
    return scores / norm if norm > 0 else scores


def _label_ids(names: list[str], labels: Sequence[str] | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(lab) for lab in labels[:n]} - set(index))
    if unknown:
        raise CompressError(
            f"prune: labels {unknown[:5]} are not among the package's labels {names}"
        )
    return np.array([index[str(lab)] for lab in labels[:n]], dtype=np.int64)
