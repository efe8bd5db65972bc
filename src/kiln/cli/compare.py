"""``kiln compare PACKAGE... | --lineage DIR``: one table and an accuracy-vs-latency chart
(perplexity vs time per output token for text-generation packages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def compare(
    packages: Annotated[list[Path] | None, typer.Argument(help="Model package folders")] = None,
    lineage: Annotated[
        Path | None,
        typer.Option("--lineage", help="Compare every package in this folder and its ancestors"),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for compare.json, the chart and reports")
    ] = Path("kiln-compare"),
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Labelled (text generation: prompt/response) file; default: the recipe's test split"
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows and front as JSON")] = False,
) -> None:
    """Compare packages: accuracy, macro-F1, latency, throughput, size, parameters, and the
    Pareto front of accuracy against p50 latency. Text-generation packages: perplexity, ROUGE-L,
    exact match, time to first token, time per output token, tokens/s, size, parameters, and the
    Pareto front of perplexity against time per output token."""
    from kiln.cli.main import user_errors
    from kiln.evaluate.compare import CompareError, compare_packages, comparison_table

    with user_errors():
        paths = list(packages or [])
        if lineage is not None:
            from kiln.evaluate.compare import lineage_packages

            paths += lineage_packages(lineage)
        if not paths:
            raise CompareError("nothing to compare: give package folders or --lineage DIR")
        result = compare_packages(paths, output_dir=output, data_file=data, num_threads=threads)
    if as_json:
        typer.echo(json.dumps({"rows": result.rows, "pareto": result.pareto}, indent=2))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped output: keep the table's columns whole
    console.print(comparison_table(result.rows))
    typer.echo(f"chart: {result.chart}")
    typer.echo(f"report: {result.report}")
