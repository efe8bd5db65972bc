"""``kiln compress PACKAGE --steps onnx,quantize-dynamic --output DIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def compress(
    package: Annotated[str, typer.Argument(help="Package folder, or name@version / name@alias, to compress")],
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
    register: Annotated[
        str | None, typer.Option("--register", help="Register every package made under this model name")
    ] = None,
) -> None:
    """Compress a package step by step (onnx, quantize-dynamic, quantize-static, quantize-torch,
    cast, sparsity, prune); print each package written with its metrics."""
    import kiln.compress
    from kiln.cli.main import user_errors
    from kiln.cli.recording import register_compressed, resolve_package
    from kiln.config.loader import apply_overrides, load_recipe
    from kiln.config.schema import CompressConfig
    from kiln.errors import ConfigError

    with user_errors():
        folder, source_ref = resolve_package(package)
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
            folder, output_dir=output, config=cfg, steps=names, examples=examples
        )
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
