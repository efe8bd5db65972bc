"""``kiln compress PACKAGE --steps onnx,quantize-dynamic --output DIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kiln.compress import Examples
    from kiln.config.schema import CompressConfig


def compress(
    package: Annotated[str, typer.Argument(help="Package folder, or name@version / name@alias, to compress")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for one package per step")],
    steps: Annotated[
        str | None,
        typer.Option(help="Comma-separated steps, e.g. prune,onnx,quantize-dynamic"),
    ] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe whose compress section and data to use")] = None,
    target_latency_ms: Annotated[
        float | None,
        typer.Option(help="Search: p50 latency at batch 1 to reach (with --max-accuracy-drop)"),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="Search: accuracy points allowed below the teacher (1.0 = one point)"),
    ] = None,
    budget_candidates: Annotated[int, typer.Option(min=1, help="Search: candidates evaluated at most")] = 12,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Overrides of the compress section, e.g. quantize.per_channel=false"),
    ] = None,
    register: Annotated[
        str | None, typer.Option("--register", help="Register every package made under this model name")
    ] = None,
) -> None:
    """Compress a package step by step (distill, vocab, onnx, quantize-dynamic, quantize-static,
    quantize-torch, cast, sparsity, prune) and print each package written with its metrics; or,
    with --target-latency-ms and --max-accuracy-drop, search for the smallest package within
    that budget (exit status 2 when none meets it)."""
    import kiln.compress
    from kiln.cli.main import user_errors
    from kiln.cli.recording import register_compressed, resolve_package
    from kiln.config.loader import apply_overrides, load_recipe
    from kiln.config.schema import CompressConfig

    with user_errors():
        folder, source_ref = resolve_package(package)
        loaded = load_recipe(recipe) if recipe is not None else None
        base = loaded.compress.model_dump(mode="json") if loaded is not None else {}
        cfg = CompressConfig.parse(apply_overrides(base, overrides or []), source="kiln compress")
        names = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
        examples = None
        if loaded is not None:
            from kiln.compress.examples import train_samples_needed

            examples = kiln.compress.examples_from_recipe(
                {"recipe": loaded.model_dump(mode="json")},
                eval_samples=cfg.eval_samples,
                train_samples=train_samples_needed(cfg, names if names is not None else cfg.steps),
            )
        if target_latency_ms is not None or max_accuracy_drop is not None:
            _search(folder, output, cfg, examples, names, target_latency_ms, max_accuracy_drop, budget_candidates)
            return
        result = kiln.compress.run(folder, output_dir=output, config=cfg, steps=names, examples=examples)
        refs: list[str | None] = [None] * len(result.packages)
        if register:
            refs = list(
                register_compressed(
                    result.packages, name=register, source_ref=source_ref, settings=cfg.model_dump(mode="json")
                )
            )
    for path, manifest, ref in zip(result.packages, result.manifests, refs, strict=True):
        summary = {
            "package": str(path),
            **({"registered": ref} if ref else {}),
            "transformation": manifest["lineage"]["transformation"],
            "format": manifest["format"],
            "precision": manifest["precision"],
            "metrics": manifest["metrics"],
        }
        typer.echo(json.dumps(summary))


def _search(
    package: Path,
    output: Path,
    cfg: CompressConfig,
    examples: Examples | None,
    steps: list[str] | None,
    target_latency_ms: float | None,
    max_accuracy_drop: float | None,
    budget_candidates: int,
) -> None:
    from kiln.compress import CompressError
    from kiln.compress.search import SearchConfig, search

    if target_latency_ms is None or max_accuracy_drop is None:
        raise CompressError("a budget search needs both --target-latency-ms and --max-accuracy-drop")
    if steps:
        raise CompressError("--steps and a budget search exclude each other: the search picks the steps")
    budget = SearchConfig.parse(
        {
            "target_latency_ms": target_latency_ms,
            "max_accuracy_drop": max_accuracy_drop,
            "max_candidates": budget_candidates,
        },
        source="kiln compress",
    )
    result = search(package, output_dir=output, budget=budget, config=cfg, examples=examples)
    for candidate in result.candidates:
        typer.echo(json.dumps(candidate))
    typer.echo(f"pareto front: {', '.join(result.pareto)}")
    typer.echo(f"report: {result.report}")
    if result.chosen is None:
        raise CompressError(f"budget not met: {result.failure}")
    chosen = result.chosen
    typer.echo(
        f"chosen: {chosen['path']} ({chosen['id']}): accuracy {chosen['accuracy']:.4f} "
        f"(-{chosen['accuracy_drop_points']:.2f} points), p50 {chosen['latency_p50_ms']:.3f} ms "
        f"({chosen['latency_ratio']:.1f}x faster), {chosen['size_bytes']} bytes "
        f"({chosen['size_ratio']:.1f}x smaller)"
    )
