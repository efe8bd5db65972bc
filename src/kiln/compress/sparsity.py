"""Unstructured sparsity: zero the smallest-magnitude weights across the whole model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.compress.checks import check_against_parent
from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import child_package
from kiln.config.schema import SparsityConfig


def sparsify(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: SparsityConfig,
    examples: Examples,
) -> dict[str, Any]:
    """Global magnitude pruning of every Linear/Conv weight matrix to ``cfg.target`` zeros.

    Weights stay dense in the package (sparse kernels are not faster on CPU at these ratios);
    the point is a model ready for sparse runtimes or compression, and the sparsity reached is
    measured on the saved weights.
    """
    from kiln.runtime.weights import load_torch_model, save_torch_model

    if parent_manifest.get("format") != "torch" or parent_manifest.get("precision") != "fp32":
        raise CompressError(
            f"{parent}: sparsity needs a fp32 torch package, got format "
            f"{parent_manifest.get('format')!r} precision {parent_manifest.get('precision')!r}"
        )
    model = load_torch_model(parent, parent_manifest)
    apply_global_magnitude(model, cfg.target)
    with child_package(
        parent,
        parent_manifest,
        dest,
        transformation="sparsity",
        settings=cfg.model_dump(mode="json"),
    ) as child:
        arch = {k: v for k, v in parent_manifest["architecture"].items() if k != "weights"}
        arch = save_torch_model(model, child.staging, arch)
        child.manifest.update(format="torch", precision="fp32", architecture=arch)
        saved = load_torch_model(child.staging, child.finalize())
        child.manifest["metrics"] = {
            "sparsity": measure_sparsity(saved, target=cfg.target),
            "agreement": check_against_parent(
                parent, child.staging, examples.eval_inputs, examples.eval_labels
            ),
        }
        return child.finalize()


def prunable_weights(model: Any) -> list[tuple[Any, str]]:
    """(module, "weight") pairs of every Linear and Conv layer: the matrices sparsity applies to."""
    from torch import nn

    return [
        (m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]


def apply_global_magnitude(model: Any, target: float) -> None:
    """Zero the ``target`` fraction of prunable weights of smallest magnitude, globally."""
    from torch.nn.utils import prune

    params = prunable_weights(model)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=target)
    for module, name in params:
        prune.remove(module, name)  # make the zeros permanent and drop the mask


def measure_sparsity(model: Any, *, target: float) -> dict[str, Any]:
    """Fraction of zeros among prunable weights and among all parameters."""
    prunable = [getattr(m, n) for m, n in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in prunable)
    total = sum(w.numel() for w in prunable)
    all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {
        "target": target,
        "reached": zeros / total,
        "prunable_weights": total,
        "zero_weights": zeros,
        "overall": all_zeros / all_total,
    }
