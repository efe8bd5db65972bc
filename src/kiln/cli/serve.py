"""``kiln serve``: serve model packages over HTTP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Serve models over HTTP (REST and Open Inference Protocol v2).")


@app.callback(invoke_without_command=True)
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Package folder or registry reference name@version / name@alias; repeat for more models or versions",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Serve YAML (models, canary, batching...)")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000)")] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes (default 1)")] = None,
    token_file: Annotated[Path | None, typer.Option(help="Bearer tokens, one per line")] = None,
    registry_tokens: Annotated[
        bool | None,
        typer.Option(
            "--registry-tokens",
            help="Accept the registry's API tokens (reader: inference; writer: management)",
        ),
    ] = None,
) -> None:
    """Serve models until SIGTERM or Ctrl-C; in-flight requests finish first."""
    from kiln.cli.main import user_errors
    from kiln.serve.config import load_serve_config, parse_serve_config
    from kiln.serve.server import models_from_specs, run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        cli = {
            "host": host,
            "port": port,
            "workers": workers,
            "token_file": token_file,
            "registry_tokens": registry_tokens,
        }
        cfg = load_serve_config(config, **cli) if config else parse_serve_config({}, "--options", **cli)
        if model:
            extra = models_from_specs(model)
            cfg = cfg.model_copy(update={"models": [*cfg.models, *extra]})
        run(cfg)
