"""``kiln train RECIPE``: train in this process, or launch data-parallel workers under torchrun,
then optionally register the package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kiln.cli.options import Overrides, RecipeFile, Register

if TYPE_CHECKING:
    from kiln.config.schema import Recipe


def train(
    recipe: RecipeFile,
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint")] = False,
    nproc_per_node: Annotated[
        int, typer.Option("--nproc-per-node", min=1, help="Data-parallel processes on this machine")
    ] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines taking part")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This machine's rank")] = 0,
    master_addr: Annotated[str, typer.Option("--master-addr", help="Address of the rank-0 machine")] = "127.0.0.1",
    master_port: Annotated[int, typer.Option("--master-port", help="Port of the rank-0 machine")] = 29500,
    register: Register = None,
) -> None:
    """Train the recipe's model and write its package."""
    from kiln.cli.main import user_errors
    from kiln.config import load_recipe

    with user_errors():
        cfg = load_recipe(recipe, overrides)
        # torchrun sets WORLD_SIZE in the workers it starts: they train, they do not launch.
        if (nproc_per_node > 1 or nnodes > 1) and "WORLD_SIZE" not in os.environ:
            import kiln.data
            from kiln.train import check_recipe
            from kiln.train.distributed import launch

            # Fail fast, with exit code 2, on refused settings or bad data before starting workers.
            check_recipe(cfg, resume=resume, processes=nproc_per_node * nnodes)
            if cfg.is_generation:
                kiln.data.load_language_data(cfg)
            else:
                kiln.data.run(cfg)
            code = launch(
                ["train", str(recipe), *(overrides or []), *(["--resume"] if resume else [])],
                nproc_per_node=nproc_per_node,
                nnodes=nnodes,
                node_rank=node_rank,
                master_addr=master_addr,
                master_port=master_port,
            )
            if code == 0 and register and node_rank == 0:
                from kiln.train import run_dir_for

                _register(run_dir_for(cfg), name=register)
            raise typer.Exit(code)
        _train_here(cfg, resume=resume, register=register)


def _train_here(cfg: Recipe, *, resume: bool, register: str | None) -> None:
    """Train in this process (alone, or as one of torchrun's workers); rank 0 reports and registers."""
    import kiln.train

    result = kiln.train.run(cfg, resume=resume)
    if result.package_dir is None:
        return
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    typer.echo(f"validation: {shown}")
    typer.echo(f"package: {result.package_dir}")
    if register:
        _register(result.run_dir, name=register)


def _register(run_dir: Path, *, name: str) -> None:
    from kiln.cli.recording import register_trained

    ref = register_trained(run_dir / "package", name=name, metrics_log=run_dir / "metrics.jsonl")
    typer.echo(f"registered: {ref}")
