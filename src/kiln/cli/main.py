"""``kiln``: one command per stage, plus ``kiln run`` for the whole pipeline.

Every command turns a ``KilnError`` (bad recipe, data or package) into a one-line message on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from kiln.cli.compare import compare
from kiln.cli.compress import compress
from kiln.cli.monitor import monitor, ui
from kiln.cli.options import Overrides, RecipeFile, Register
from kiln.cli.recording import REFERENCE_HELP
from kiln.cli.registry import app as registry_app
from kiln.cli.replay import replay
from kiln.cli.run import run
from kiln.cli.serve import app as serve_app
from kiln.cli.train import train
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
app.add_typer(registry_app, name="registry")
app.command("compress")(compress)
app.command("compare")(compare)
app.command("replay")(replay)
app.add_typer(serve_app, name="serve")
app.command("monitor")(monitor)
app.command("ui")(ui)
app.command("run")(run)
app.command("train")(train)


def _print_version(is_asked: bool) -> None:
    if is_asked:
        from kiln import __version__

        typer.echo(f"kiln {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Print Kiln's version and exit", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Kiln: data -> train -> compress -> evaluate -> registry -> serve -> monitor."""


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
    recipe: RecipeFile,
    overrides: Overrides = None,
) -> None:
    """Validate a recipe and print it with every default filled in."""
    from kiln.config import load_recipe

    with user_errors():
        cfg = load_recipe(recipe, overrides)
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@app.command("eval")
def eval_(
    package: Annotated[str, typer.Argument(help=REFERENCE_HELP)],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Labelled CSV/TSV/JSONL/Parquet file; default: the recipe's test split"),
    ] = None,
    text_column: Annotated[str, typer.Option(help="Text column in --data")] = "text",
    label_column: Annotated[str, typer.Option(help="Label column in --data")] = "label",
    encoding: Annotated[str, typer.Option(help="Encoding of --data")] = "utf-8",
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Where report.json and confusion_matrix.png go")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON")] = False,
    speed: Annotated[
        bool, typer.Option("--speed", help="Also measure latency, throughput, size and peak memory")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads when timing")] = None,
    register: Register = None,
) -> None:
    """Evaluate a package: accuracy, macro-F1, per-class precision/recall, confusion matrix, ECE
    (and with --speed: latency p50/p95/p99, throughput at batch 1/8/32/128, size, peak memory)."""
    import kiln.evaluate
    from kiln.cli.recording import register_evaluated, resolve_package
    from kiln.config.home import kiln_home

    with user_errors():
        folder, ref = resolve_package(package)
        if ref is not None and output_dir is None:
            output_dir = kiln_home() / "evals" / ref.replace("@", "-")
        result = kiln.evaluate.run(
            kiln.evaluate.EvaluationConfig(
                package=folder,
                data_file=data,
                text_column=text_column,
                label_column=label_column,
                encoding=encoding,
                output_dir=output_dir,
                measure_speed=speed,
                num_threads=threads,
            )
        )
        if register:
            metrics = {k: result.report[k] for k in ("accuracy", "macro_f1", "ece")}
            registered = register_evaluated(folder, name=register, metrics=metrics)
            typer.echo(f"metrics recorded on {registered}", err=True)
    if as_json:
        typer.echo(json.dumps(result.report, indent=2))
        return
    _print_report(result.report)
    typer.echo(f"report: {result.output_dir / 'report.json'}")
    typer.echo(f"confusion matrix: {result.output_dir / 'confusion_matrix.png'}")


@app.command()
def predict(
    package: Annotated[str, typer.Argument(help=REFERENCE_HELP)],
    inputs: Annotated[list[str], typer.Argument(help="Raw texts to classify")],
) -> None:
    """Classify raw texts with a package and print one JSON result per line."""
    from kiln.cli.recording import resolve_package
    from kiln.runtime import load_classifier

    with user_errors():
        predictor = load_classifier(resolve_package(package)[0])
        for text, result in zip(inputs, predictor.predict(inputs), strict=True):
            typer.echo(json.dumps({"input": text, **result}))


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"{report.get('name')} on {report['data']} (n={report['n']})")
    if report.get("task") == "recommendation":
        metrics = ("hr@10", "ndcg@10", "recall@20", "coverage@10")
        for column in metrics:
            summary.add_column(column, justify="right")
        summary.add_row(*(f"{report[m]:.4f}" for m in metrics))
        console.print(summary)
        return
    for column in ("accuracy", "macro-F1", "ECE"):
        summary.add_column(column, justify="right")
    summary.add_row(f"{report['accuracy']:.4f}", f"{report['macro_f1']:.4f}", f"{report['ece']:.4f}")
    console.print(summary)
    per_class = Table(title="per class")
    for column in ("label", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="right" if column != "label" else "left")
    for name, row in report["per_class"].items():
        per_class.add_row(
            name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])
        )
    console.print(per_class)
    if "speed" in report:
        from kiln.evaluate.compare import speed_table

        console.print(speed_table(report["speed"]))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kiln")


if __name__ == "__main__":
    main()
