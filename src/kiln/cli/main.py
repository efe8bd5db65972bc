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
        typer.Option(
            "--data",
            help="Labelled (text generation: prompt/response) CSV/TSV/JSONL/Parquet file; "
            "default: the recipe's test split",
        ),
    ] = None,
    text_column: Annotated[
        str, typer.Option(help="Text column in --data (text generation: documents for perplexity)")
    ] = "text",
    label_column: Annotated[str, typer.Option(help="Label column in --data")] = "label",
    oos_label: Annotated[
        str | None,
        typer.Option(help="Label of out-of-scope rows in --data (support packages); default: the package's, oos"),
    ] = None,
    prompt_column: Annotated[str, typer.Option(help="Prompt column in --data (text generation)")] = "prompt",
    response_column: Annotated[
        str, typer.Option(help="Reference response column in --data (text generation)")
    ] = "response",
    encoding: Annotated[str, typer.Option(help="Encoding of --data")] = "utf-8",
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Where report.json and confusion_matrix.png (or answers.jsonl) go"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON")] = False,
    speed: Annotated[
        bool, typer.Option("--speed", help="Also measure latency, throughput, size and peak memory")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads when timing")] = None,
    register: Register = None,
) -> None:
    """Evaluate a package: accuracy, macro-F1, per-class precision/recall, confusion matrix, ECE
    (and with --speed: latency p50/p95/p99, throughput at batch 1/8/32/128, size, peak memory).

    A text-generation package: perplexity on held-out text, ROUGE-L and exact match of greedy
    answers to test prompts, size (and with --speed: time to first token, time per output token).
    """
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
                oos_label=oos_label,
                prompt_column=prompt_column,
                response_column=response_column,
                encoding=encoding,
                output_dir=output_dir,
                measure_speed=speed,
                num_threads=threads,
            )
        )
        if register:
            metrics = kiln.evaluate.quality_metrics(result.report)
            registered = register_evaluated(folder, name=register, metrics=metrics)
            typer.echo(f"metrics recorded on {registered}", err=True)
    if as_json:
        typer.echo(json.dumps(result.report, indent=2))
        return
    _print_report(result.report)
    typer.echo(f"report: {result.output_dir / 'report.json'}")
    if result.report.get("task") == "text-generation":
        if "rouge_l" in result.report:
            typer.echo(f"answers: {result.output_dir / 'answers.jsonl'}")
        return
    typer.echo(f"confusion matrix: {result.output_dir / 'confusion_matrix.png'}")


@app.command()
def predict(
    package: Annotated[str, typer.Argument(help=REFERENCE_HELP)],
    inputs: Annotated[
        list[str], typer.Argument(help="Raw texts to classify, or the prompt of a text-generation package")
    ],
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Most tokens to generate (default: the package's)")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Sampling temperature; 0 is greedy (default: the package's)")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1]")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sample among the k likeliest tokens (0: all)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed, for a repeatable answer")] = None,
    system: Annotated[
        str | None, typer.Option("--system", help="A system message before the prompt (needs a chat template)")
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Send the prompt as plain text, not through the chat template")
    ] = False,
) -> None:
    """Classify raw texts (one JSON result per line), or stream a text-generation package's answer to a prompt.

    A prompt goes to a package with a chat template as a user message (after the --system
    message); the answer is printed as it is decoded.
    """
    from kiln.cli.recording import resolve_package
    from kiln.runtime import load_classifier, read_manifest

    params = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
    }
    given = {k: v for k, v in params.items() if v is not None}
    with user_errors():
        folder = resolve_package(package)[0]
        if read_manifest(folder, verify=False).get("task") == "text-generation":
            _stream_answer(folder, inputs, given, system=system, is_raw=raw)
            return
        if given or system is not None or raw:
            options = ", ".join(f"--{k.replace('_', '-')}" for k in given) or ("--system" if system else "--raw")
            raise KilnError(f"{options}: generation options apply to text-generation packages only")
        predictor = load_classifier(folder)
        for text, result in zip(inputs, predictor.predict(inputs), strict=True):
            typer.echo(json.dumps({"input": text, **result}))


def _stream_answer(
    folder: Path, inputs: list[str], params: dict[str, Any], *, system: str | None, is_raw: bool
) -> None:
    import sys

    from kiln.runtime import load_generator

    if len(inputs) != 1:
        raise KilnError(f"a text-generation package takes one prompt, got {len(inputs)}")
    generator = load_generator(folder)
    prompt: Any = inputs[0]
    if system is not None or (generator.chat_template is not None and not is_raw):
        if is_raw:
            raise KilnError("--system and --raw: a system message needs the chat template, which --raw skips")
        system_message = [{"role": "system", "content": system}] if system is not None else []
        prompt = [*system_message, {"role": "user", "content": inputs[0]}]
    pieces = generator.stream(prompt, **params)
    if pieces.truncated_tokens:
        typer.echo(f"note: the prompt was cut by {pieces.truncated_tokens} tokens from the left to fit", err=True)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"{report.get('name')} on {report['data']} (n={report['n']})")
    if report.get("task") == "text-generation":
        if not console.is_terminal:
            console = Console(width=160)  # piped output: keep the tables' columns whole
        _print_generation_report(console, summary, report)
        return
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
    if "open_intent" in report:
        _print_open_intent(console, report["open_intent"])
    if "speed" in report:
        from kiln.evaluate.compare import speed_table

        console.print(speed_table(report["speed"]))


def _print_open_intent(console: Any, open_intent: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal:
        console = Console(width=160)  # piped output: keep the columns' names whole

    table = Table(
        title=f"support hand-off: {open_intent['inscope_n']} in-scope rows, "
        f"{open_intent['oos_n']} labelled {open_intent['oos_label']!r}"
    )
    columns = {
        "in-scope accuracy": "inscope_accuracy",
        "in-scope hand-off rate": "inscope_handoff_rate",
        "out-of-scope recall": "oos_recall",
        "open-class F1": "open_f1",
    }
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*(f"{open_intent[key]:.4f}" for key in columns.values()))
    console.print(table)


def _print_generation_report(console: Any, summary: Any, report: dict[str, Any]) -> None:
    columns = {"perplexity": "perplexity", "loss": "loss", "tokens": "tokens"}
    if "rouge_l" in report:
        columns |= {"rouge_l": "ROUGE-L", "exact_match": "exact match", "answered": "answered"}
    columns["size_mb"] = "size MB"
    for title in columns.values():
        summary.add_column(title, justify="right")
    summary.add_row(*(f"{report[k]:.4f}" if isinstance(report[k], float) else str(report[k]) for k in columns))
    console.print(summary)
    if "speed" in report:
        from kiln.evaluate.compare import generation_speed_table

        console.print(generation_speed_table(report["speed"]))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="kiln")


if __name__ == "__main__":
    main()
