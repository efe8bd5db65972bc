"""Arguments and options that several ``kiln`` commands take with the same meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RecipeFile = Annotated[Path, typer.Argument(help="Recipe YAML file")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Overrides such as train.epochs=1 data.max_examples=500")]
Register = Annotated[
    str | None, typer.Option("--register", help="Register the result under this model name in the registry")
]
