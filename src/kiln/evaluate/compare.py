"""Compare packages side by side: quality, speed and size in one table, and a trade-off chart.

Each package is scored and timed by ``kiln.evaluate.run`` with ``measure_speed`` (the same data
and runtime as ``kiln eval --speed``). For classifiers the accuracy-versus-latency chart marks
the Pareto front, the packages no other package beats on both accuracy and p50 latency; for
text-generation packages the chart is perplexity against the median time per output token, and
the front the packages no other beats on both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kiln.errors import KilnError
from kiln.runtime.measures import package_parameters, pareto_front
from kiln.runtime.package import MANIFEST_NAME

TABLE_COLUMNS = (
    "package",
    "accuracy",
    "macro-F1",
    "p50 ms",
    "p99 ms",
    "inputs/s @32",
    "size MB",
    "params",
    "format",
    "transformation",
)
GENERATION_COLUMNS = (
    "package",
    "perplexity",
    "ROUGE-L",
    "exact match",
    "TTFT p50 ms",
    "TPOT p50 ms",
    "tokens/s",
    "size MB",
    "params",
    "format",
    "transformation",
)
GENERATION = "text-generation"


class CompareError(KilnError):
    """Packages that cannot be compared (none given, missing, different tasks or labels)."""


@dataclass(frozen=True)
class Comparison:
    """The compared packages' rows, the Pareto front and where the outputs went."""

    rows: list[dict[str, Any]]  # one per package, in the order given
    pareto: list[int]  # indices into rows of the Pareto-optimal packages, fastest first
    chart: Path  # the accuracy-versus-latency (text generation: perplexity-versus-TPOT) PNG
    report: Path  # compare.json with rows and front


def lineage_packages(folder: str | Path) -> list[Path]:
    """Packages in ``folder`` (itself and its subfolders) and, following lineage, their ancestors.

    Ancestors come first, so a compress output folder lists the teacher, then each step.
    """
    root = Path(folder)
    found = [root] if (root / MANIFEST_NAME).is_file() else []
    found += sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}"))
    if not found:
        raise CompareError(f"{root}: no model packages (folders holding {MANIFEST_NAME}) in it")
    seen = {p.resolve() for p in found}
    ancestors: list[Path] = []
    for package in found:
        parent = _parent_path(package)
        while parent is not None and parent.resolve() not in seen and parent.is_dir():
            seen.add(parent.resolve())
            ancestors.insert(0, parent)
            parent = _parent_path(parent)
    return ancestors + found


def compare_packages(
    packages: Sequence[str | Path],
    *,
    output_dir: str | Path,
    data_file: Path | None = None,
    num_threads: int | None = None,
) -> Comparison:
    """Score, time and size every package, find the Pareto front, write the chart and JSON.

    Raises:
        CompareError: no packages, or packages of different tasks or with different labels.
        KilnError: a package or its evaluation data cannot be read.
    """
    import kiln.evaluate
    from kiln.runtime.package import read_manifest

    if not packages:
        raise CompareError("nothing to compare: give package folders or --lineage DIR")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifests = [read_manifest(p) for p in packages]
    tasks = sorted({str(m.get("task")) for m in manifests})
    if len(tasks) > 1:
        raise CompareError(f"the packages are of different tasks ({', '.join(tasks)}); compare versions of one model")
    is_generation = tasks == [GENERATION]
    labels = {tuple(m["labels"]) for m in manifests}
    if len(labels) > 1:
        raise CompareError("the packages predict different labels; compare versions of one model")
    rows = []
    for i, (path, manifest) in enumerate(zip(packages, manifests, strict=True)):
        result = kiln.evaluate.run(
            kiln.evaluate.EvaluationConfig(
                package=Path(path),
                data_file=data_file,
                output_dir=out / "reports" / f"{i:02d}-{Path(path).name}",
                measure_speed=True,
                num_threads=num_threads,
            )
        )
        make_row = _generation_row if is_generation else _row
        rows.append(make_row(Path(path), manifest, result.report))
    if is_generation:
        # Lower perplexity is better: negated, it is the "accuracy" the front maximises.
        front = pareto_front([(r["tpot_p50_ms"], -r["perplexity"]) for r in rows])
    else:
        front = pareto_front([(r["latency_p50_ms"], r["accuracy"]) for r in rows])
    for i, row in enumerate(rows):
        row["pareto"] = i in front
    if is_generation:
        chart = plot_generation_tradeoff(rows, front, out / "perplexity_vs_tpot.png")
    else:
        chart = plot_tradeoff(rows, front, out / "accuracy_vs_latency.png")
    report = out / "compare.json"
    report.write_text(json.dumps({"rows": rows, "pareto": front}, indent=2) + "\n", encoding="utf-8")
    return Comparison(rows=rows, pareto=front, chart=chart, report=report)


def plot_tradeoff(rows: Sequence[dict[str, Any]], front: Sequence[int], path: Path) -> Path:
    """Accuracy against p50 latency, one labelled point per package, the Pareto front joined."""
    return _plot(
        rows,
        front,
        path,
        xs=[r["latency_p50_ms"] for r in rows],
        ys=[100 * r["accuracy"] for r in rows],
        xlabel="p50 latency at batch 1 (ms)",
        ylabel="accuracy (%)",
        title="accuracy vs latency",
        legend="lower right",
    )


def plot_generation_tradeoff(rows: Sequence[dict[str, Any]], front: Sequence[int], path: Path) -> Path:
    """Perplexity against the median time per output token, one labelled point per package, the
    Pareto front joined."""
    return _plot(
        rows,
        front,
        path,
        xs=[r["tpot_p50_ms"] for r in rows],
        ys=[r["perplexity"] for r in rows],
        xlabel="time per output token at batch 1, p50 (ms)",
        ylabel="perplexity",
        title="perplexity vs time per token",
        legend="upper right",
    )


def _plot(
    rows: Sequence[dict[str, Any]],
    front: Sequence[int],
    path: Path,
    *,
    xs: list[float],
    ys: list[float],
    xlabel: str,
    ylabel: str,
    title: str,
    legend: Literal["lower right", "upper right"],
) -> Path:
    """A scatter of one labelled point per package, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        ax.scatter(xs, ys, color="tab:gray", zorder=2, label="package")
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            "o-",
            color="tab:red",
            zorder=3,
            label="Pareto front",
        )
        for x, y, row in zip(xs, ys, rows, strict=True):
            ax.annotate(row["package"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc=legend)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def comparison_table(rows: Sequence[dict[str, Any]]) -> Any:
    """A rich table of compared packages; Pareto-optimal ones are marked with ``*``."""
    from rich.table import Table

    if rows and rows[0].get("task") == GENERATION:
        return _generation_table(rows)
    table = Table(title="comparison (* = on the accuracy/latency Pareto front)")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("package", "format", "transformation") else "right")
    for r in rows:
        table.add_row(
            ("* " if r.get("pareto") else "  ") + r["package"],
            f"{r['accuracy']:.4f}",
            f"{r['macro_f1']:.4f}",
            f"{r['latency_p50_ms']:.2f}",
            f"{r['latency_p99_ms']:.2f}",
            f"{r['throughput_32']:.0f}",
            f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['parameters']:,}",
            f"{r['format']}/{r['precision']}",
            r["transformation"],
        )
    return table


def _generation_table(rows: Sequence[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="comparison (* = on the perplexity/time-per-token Pareto front)")
    for column in GENERATION_COLUMNS:
        table.add_column(column, justify="left" if column in ("package", "format", "transformation") else "right")
    for r in rows:
        table.add_row(
            ("* " if r.get("pareto") else "  ") + r["package"],
            f"{r['perplexity']:.3f}",
            "-" if r["rouge_l"] is None else f"{r['rouge_l']:.4f}",
            "-" if r["exact_match"] is None else f"{r['exact_match']:.4f}",
            f"{r['ttft_p50_ms']:.2f}",
            f"{r['tpot_p50_ms']:.2f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['parameters']:,}",
            f"{r['format']}/{r['precision']}",
            r["transformation"],
        )
    return table


def generation_speed_table(speed: dict[str, Any]) -> Any:
    """A rich table of one text-generation package's batch-1 timings, size and memory."""
    from rich.table import Table

    table = Table(title=f"speed at batch 1, {speed['max_new_tokens']} new tokens (CPU)")
    columns = ["TTFT p50 ms", "TTFT p95 ms", "TPOT p50 ms", "TPOT p95 ms", "tokens/s", "size MB", "peak mem MB"]
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(
        f"{speed['ttft_ms']['p50']:.2f}",
        f"{speed['ttft_ms']['p95']:.2f}",
        f"{speed['tpot_ms']['p50']:.2f}",
        f"{speed['tpot_ms']['p95']:.2f}",
        f"{speed['tokens_per_s']:.1f}",
        f"{speed['size_bytes'] / 1e6:.2f}",
        f"{speed['peak_rss_delta_bytes'] / 1e6:.1f}",
    )
    return table


def speed_table(speed: dict[str, Any]) -> Any:
    """A rich table of one package's latency, throughput, size and memory."""
    from rich.table import Table

    table = Table(title="speed and size (CPU)")
    sizes = list(speed["throughput"])
    columns = ["p50 ms", "p95 ms", "p99 ms", *(f"inputs/s @{b}" for b in sizes), "size MB", "peak mem MB"]
    for column in columns:
        table.add_column(column, justify="right")
    lat = speed["latency_ms"]
    table.add_row(
        f"{lat['p50']:.2f}",
        f"{lat['p95']:.2f}",
        f"{lat['p99']:.2f}",
        *(f"{speed['throughput'][b]:.0f}" for b in sizes),
        f"{speed['size_bytes'] / 1e6:.2f}",
        f"{speed['peak_rss_delta_bytes'] / 1e6:.1f}",
    )
    return table


def _row(path: Path, manifest: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    speed = report["speed"]
    lineage = manifest.get("lineage") or {}
    return {
        "package": path.name,
        "path": str(path),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "latency_p50_ms": speed["latency_ms"]["p50"],
        "latency_p95_ms": speed["latency_ms"]["p95"],
        "latency_p99_ms": speed["latency_ms"]["p99"],
        "throughput": speed["throughput"],
        "throughput_32": speed["throughput"].get("32", 0.0),
        "size_bytes": speed["size_bytes"],
        "parameters": package_parameters(path),
        "format": manifest.get("format"),
        "precision": manifest.get("precision"),
        "transformation": lineage.get("transformation"),
    }


def _generation_row(path: Path, manifest: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    speed = report["speed"]
    lineage = manifest.get("lineage") or {}
    return {
        "package": path.name,
        "path": str(path),
        "task": GENERATION,
        "perplexity": report["perplexity"],
        "loss": report["loss"],
        "rouge_l": report.get("rouge_l"),
        "exact_match": report.get("exact_match"),
        "ttft_p50_ms": speed["ttft_ms"]["p50"],
        "ttft_p95_ms": speed["ttft_ms"]["p95"],
        "tpot_p50_ms": speed["tpot_ms"]["p50"],
        "tpot_p95_ms": speed["tpot_ms"]["p95"],
        "tokens_per_s": speed["tokens_per_s"],
        "size_bytes": speed["size_bytes"],
        "parameters": package_parameters(path),
        "format": manifest.get("format"),
        "precision": manifest.get("precision"),
        "transformation": lineage.get("transformation"),
    }


def _parent_path(package: Path) -> Path | None:
    from kiln.runtime.package import read_manifest

    parent = ((read_manifest(package, verify=False).get("lineage") or {}).get("parent")) or None
    if isinstance(parent, dict) and parent.get("path"):
        return Path(parent["path"])
    return None
