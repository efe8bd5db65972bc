"""``kiln compress PACKAGE --steps onnx,quantize-dynamic --output DIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def compress(
    package: Annotated[Path, typer.Argument(help="Model package folder to compress")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for one package per step")],
    steps: Annotated[
        str | None,
        typer.Option(help="Comma-separated steps, e.g. prune,onnx,quantize-dynamic"),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe whose compress section and data to use")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Overrides of the compress section, e.g. quantize.per_channel=false"),
    ] = None,
) -> None:
    """Compress a package step by step (onnx, quantize-dynamic, quantize-static, quantize-torch,
    cast, sparsity, prune); print each package written with its metrics."""
    import kiln.compress
    from kiln.cli.main import user_errors
    from kiln.config.loader import apply_overrides, load_recipe
    from kiln.config.schema import CompressConfig
    from kiln.errors import ConfigError

    with user_errors():
        loaded = load_recipe(recipe) if recipe is not None else None
        base = loaded.compress.model_dump(mode="json") if loaded is not None else {}
        try:
            cfg = CompressConfig.model_validate(apply_overrides(base, overrides or []))
        except ValueError as exc:
            raise ConfigError(f"compress settings: {exc}") from None
        examples = None
        if loaded is not None:
            examples = kiln.compress.examples_from_recipe(
                {"recipe": loaded.model_dump(mode="json")},
                eval_samples=cfg.eval_samples,
                train_samples=max(cfg.quantize.calibration_samples, cfg.prune.importance_samples),
            )
        names = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
        result = kiln.compress.run(
            package, output_dir=output, config=cfg, steps=names, examples=examples
        )
    for path, manifest in zip(result.packages, result.manifests, strict=True):
        summary = {
            "package": str(path),
            "transformation": manifest["lineage"]["transformation"],
            "format": manifest["format"],
            "precision": manifest["precision"],
            "metrics": manifest["metrics"],
        }
        typer.echo(json.dumps(summary))
