"""``kiln``: one command per stage, plus ``kiln run`` for the whole pipeline.

Every command turns a ``KilnError`` (bad recipe, data or package) into a one-line message on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from kiln.cli.serve import app as serve_app
from kiln.errors import KilnError

app = typer.Typer(
    name="kiln",
    help="Kiln: data -> train -> compress -> evaluate -> registry -> serve -> monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Inspect and validate recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(serve_app, name="serve")

Overrides = Annotated[
    list[str] | None, typer.Argument(help="Overrides such as train.epochs=1 data.max_examples=500")
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report ``KilnError`` as ``error: ...`` with its exit code instead of a traceback."""
    try:
        yield
    except KilnError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


@recipe_app.command("validate")
def recipe_validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file")],
    overrides: Overrides = None,
) -> None:
    """Validate a recipe and print it with every default filled in."""
    from kiln.config import load_recipe

    with user_errors():
        cfg = load_recipe(recipe, overrides)
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kiln")


if __name__ == "__main__":
    sys.exit(main())
