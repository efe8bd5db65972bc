"""``kiln run RECIPE``: the whole pipeline, then a summary of every package and the gate."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kiln.cli.options import Overrides, RecipeFile

if TYPE_CHECKING:
    from kiln.pipeline import PipelineResult

# Exit status of `kiln run --require-promotion` when no candidate passes the gate.
GATE_REFUSED_EXIT = 3


def run(
    recipe: RecipeFile,
    overrides: Overrides = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo every stage even when its output exists for the same inputs")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    require_promotion: Annotated[
        bool,
        typer.Option(
            "--require-promotion",
            help=f"Exit with status {GATE_REFUSED_EXIT} when no candidate passes the recipe's promote gate",
        ),
    ] = False,
) -> None:
    """Run the pipeline: data -> train -> compress -> evaluate -> register -> promote.

    Stages whose output already exists for the same inputs and code are skipped, so re-running
    an interrupted run resumes it. A gate that passes no candidate is a result, not an error:
    the alias stays, the reason is printed and the exit status is 0 (3 with --require-promotion).
    """
    from kiln.cli.main import user_errors
    from kiln.config import load_recipe
    from kiln.pipeline import run_pipeline

    def report(line: str) -> None:
        typer.echo(line, err=True)

    with user_errors():
        result = run_pipeline(load_recipe(recipe, overrides), is_forced=force, report=report)
    if as_json:
        typer.echo(json.dumps(summary_json(result), indent=2))
    else:
        print_summary(result)
    if require_promotion and result.decision is not None and result.decision.chosen is None:
        typer.echo(f"error: no candidate passes the promote gate ({result.decision.alias} not moved)", err=True)
        raise typer.Exit(GATE_REFUSED_EXIT)


def summary_json(result: PipelineResult) -> dict[str, Any]:
    """The run's packages, their test metrics and the gate's decision, as plain data."""
    decision = result.decision
    return {
        "packages": [
            {
                "step": p.step,
                "ref": p.ref,
                "path": str(p.path),
                "eval_dir": str(p.eval_dir) if p.eval_dir else None,
                "metrics": p.metrics,
                "skipped": list(p.skipped),
            }
            for p in result.packages
        ],
        "run_id": result.run_id,
        "data_fingerprint": result.data_fingerprint,
        "promoted": decision.chosen.candidate.ref if decision and decision.chosen else None,
        "promote_reason": decision.reason if decision else None,
        "app_dir": str(result.app_dir) if result.app_dir else None,
        "app_report": result.app_report,
    }


# The columns of the summary table, by the task's headline metric: (metric, title).
SUMMARY_COLUMNS = {
    "ndcg@10": [("hr@10", "hr@10"), ("ndcg@10", "ndcg@10"), ("recall@20", "recall@20"), ("coverage@10", "coverage@10")],
    "accuracy": [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("p99_latency_ms", "p99 ms")],
    "perplexity": [
        ("perplexity", "perplexity"),
        ("rouge_l", "ROUGE-L"),
        ("ttft_ms", "TTFT ms"),
        ("tpot_ms", "TPOT ms"),
    ],
}


def _cell(metrics: dict[str, float], key: str) -> str:
    if key not in metrics:
        return "-"
    return f"{metrics[key]:.2f}" if key.endswith("_ms") else f"{metrics[key]:.4f}"


def print_summary(result: PipelineResult) -> None:
    """A table of every package with its metrics and version, then the gate's decision."""
    from rich.console import Console
    from rich.table import Table

    from kiln.pipeline import headline_metric

    decision = result.decision
    promoted = decision.chosen.candidate.ref if decision and decision.chosen else None
    headline = headline_metric(result.packages[0].metrics) if result.packages else "accuracy"
    shown = SUMMARY_COLUMNS[headline]
    table = Table(title="packages")
    for column in ("step", "version", *(title for _, title in shown), "size MB", "note"):
        table.add_column(column, justify="left" if column in ("step", "version", "note") else "right")
    for p in result.packages:
        notes = ["new" if p.is_new_version else "already registered"]
        if p.skipped:
            notes.append("skipped " + "+".join(p.skipped))
        if promoted == p.ref:
            notes.append(decision.alias if decision else "")
        m = p.metrics
        cells = [_cell(m, key) for key, _ in shown]
        table.add_row(p.step, p.ref, *cells, f"{m['size_mb']:.2f}", ", ".join(notes))
    Console(width=120).print(table)
    for p in result.packages:
        typer.echo(f"{p.ref}\t{p.step}\ttest {headline} {p.metrics[headline]:.4f}\t{p.path}")
    if result.app_dir is not None and result.app_report is not None:
        support = result.app_report
        typer.echo(
            f"support app: {result.app_dir} (hand-off threshold {support['threshold']:.3f}, "
            f"test hand-off rate {support['test']['handoff_rate']:.3f})"
        )
    typer.echo(f"run: {result.run_id or 'none (every package was already registered)'}")
    if decision is None:
        typer.echo("promote: no promote section in the recipe; no alias moved")
        return
    for considered in decision.considered:
        for check in considered.checks:
            typer.echo(f"  {considered.candidate.ref} {check.status}: {check.rule} ({check.detail})")
    typer.echo(f"promote: {decision.reason}")
    if decision.chosen is None:
        name = result.packages[0].ref.rsplit("@", 1)[0]
        typer.echo(
            f"promote: every package is registered all the same; `kiln registry lineage {name}@latest` "
            f"shows them, `kiln registry alias set {name} {decision.alias} VERSION` moves the alias by hand"
        )
