"""The compress stage: an ordered list of steps, each writing a new model package.

``run(package, steps=[...], output_dir=...)`` applies the steps in order; each step reads the
previous step's package, writes its own (atomically, with lineage to its parent and the metrics
measured against it) and hands it on. Steps are plain functions in ``STEPS``; a text-generation
package takes the steps of ``kiln.compress.generation`` instead. The latency-budget search
(``kiln.compress.search``) combines classifier steps into candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples, examples_from_recipe, train_samples_needed
from kiln.config.schema import CompressConfig

__all__ = ["CompressError", "CompressResult", "Examples", "STEPS", "examples_from_recipe", "run"]

# A step: (parent folder, parent manifest, destination, stage config, examples) -> manifest.
Step = Callable[[Path, dict[str, Any], Path, CompressConfig, Examples], dict[str, Any]]


@dataclass(frozen=True)
class CompressResult:
    """The packages written, in step order, with their manifests."""

    packages: list[Path]
    manifests: list[dict[str, Any]]


def _distill(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.distill import distill_package

    return distill_package(parent, manifest, dest, cfg.distill, ex)


def _onnx(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.onnx_export import export_onnx

    return export_onnx(parent, manifest, dest, cfg.onnx, ex)


def _quantize_dynamic(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.quantize import quantize_onnx_dynamic

    return quantize_onnx_dynamic(parent, manifest, dest, cfg.quantize, ex)


def _quantize_static(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.quantize import quantize_onnx_static

    return quantize_onnx_static(parent, manifest, dest, cfg.quantize, ex)


def _quantize_torch(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.quantize import quantize_torch_dynamic

    return quantize_torch_dynamic(parent, manifest, dest, cfg.quantize, ex)


def _cast(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.quantize import cast_torch

    return cast_torch(parent, manifest, dest, cfg.cast, ex)


def _sparsity(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.sparsity import sparsify

    return sparsify(parent, manifest, dest, cfg.sparsity, ex)


def _prune(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.pruning import prune_structured

    return prune_structured(parent, manifest, dest, cfg.prune, ex, recovery=cfg.distill)


def _vocab(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    from kiln.compress.vocab import trim_vocabulary

    return trim_vocabulary(parent, manifest, dest, cfg.vocab, ex)


STEPS: dict[str, Step] = {
    "distill": _distill,
    "vocab": _vocab,
    "onnx": _onnx,
    "quantize-dynamic": _quantize_dynamic,
    "quantize-static": _quantize_static,
    "quantize-torch": _quantize_torch,
    "cast": _cast,
    "sparsity": _sparsity,
    "prune": _prune,
}


def run(
    package: str | Path,
    *,
    output_dir: str | Path,
    config: CompressConfig | None = None,
    steps: Sequence[str] | None = None,
    examples: Examples | None = None,
) -> CompressResult:
    """Apply compression steps in order, writing ``output_dir/NN-<step>`` for each.

    Args:
        package: the package to compress.
        output_dir: folder that receives one package per step.
        config: settings of every step; defaults when empty.
        steps: step names, overriding ``config.steps``.
        examples: real raw inputs to check and calibrate with; by default taken from the data
            of the recipe recorded in the package's manifest.

    Raises:
        CompressError: unknown step, no steps, no inputs to check with, or a step that cannot
            apply to its parent package (for a text-generation package, checked before any
            step runs). ``PackageError`` if the package is missing or altered.
    """
    import torch

    from kiln.runtime.package import read_manifest

    cfg = config or CompressConfig()
    names = list(steps if steps is not None else cfg.steps)
    if not names:
        raise CompressError("no compression steps given; choose from " + ", ".join(STEPS))
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise CompressError(
            f"unknown compression step(s) {unknown}; choose from {', '.join(STEPS)}"
        )
    parent = Path(package)
    manifest = read_manifest(parent)
    table = STEPS
    if manifest.get("task") == "text-generation":
        from kiln.compress.generation import GENERATION_STEPS, check_steps

        check_steps(parent, manifest, names, cfg)
        table = GENERATION_STEPS
    if examples is None:
        examples = examples_from_recipe(
            manifest,
            eval_samples=cfg.eval_samples,
            train_samples=train_samples_needed(cfg, names),
        )
    if examples is None:
        raise CompressError(
            f"{parent}: its manifest records no recipe with data, so there are no real inputs "
            "to check the compressed packages with; give a recipe with data (--recipe)"
        )
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(output_dir)
    packages, manifests = [], []
    for i, name in enumerate(names, start=1):
        dest = out / f"{i:02d}-{name}"
        manifest = table[name](parent, manifest, dest, cfg, examples)
        packages.append(dest)
        manifests.append(manifest)
        parent = dest
    return CompressResult(packages=packages, manifests=manifests)
