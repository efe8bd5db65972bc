"""Compare packages side by side: accuracy, speed and size in one table, and a trade-off chart.

Each package is scored by ``kiln.evaluate.run`` (the same data and runtime as ``kiln eval``) and
timed with ``speed.measure_package``; the accuracy-versus-latency chart marks the Pareto front,
the packages no other package beats on both accuracy and p50 latency.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class CompareError(KilnError):
    """Packages that cannot be compared (none given, missing, different labels)."""


@dataclass(frozen=True)
class Comparison:
    """The compared packages' rows, the Pareto front and where the outputs went."""

    rows: list[dict[str, Any]]  # one per package, in the order given
    pareto: list[int]  # indices into rows of the Pareto-optimal packages, fastest first
    chart: Path  # the accuracy-versus-latency PNG
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
        CompareError: no packages, or packages with different labels.
        KilnError: a package or its evaluation data cannot be read.
    """
    import kiln.evaluate
    from kiln.runtime.package import read_manifest

    if not packages:
        raise CompareError("nothing to compare: give package folders or --lineage DIR")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifests = [read_manifest(p) for p in packages]
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
        rows.append(_row(Path(path), manifest, result.report))
    front = pareto_front([(r["latency_p50_ms"], r["accuracy"]) for r in rows])
    for i, row in enumerate(rows):
        row["pareto"] = i in front
    chart = plot_tradeoff(rows, front, out / "accuracy_vs_latency.png")
    report = out / "compare.json"
    report.write_text(json.dumps({"rows": rows, "pareto": front}, indent=2) + "\n", encoding="utf-8")
    return Comparison(rows=rows, pareto=front, chart=chart, report=report)


def plot_tradeoff(rows: Sequence[dict[str, Any]], front: Sequence[int], path: Path) -> Path:
    """Accuracy against p50 latency, one labelled point per package, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        xs = [r["latency_p50_ms"] for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
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
        ax.set_xlabel("p50 latency at batch 1 (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy vs latency")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def comparison_table(rows: Sequence[dict[str, Any]]) -> Any:
    """A rich table of compared packages; Pareto-optimal ones are marked with ``*``."""
    from rich.table import Table

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


def _parent_path(package: Path) -> Path | None:
    from kiln.runtime.package import read_manifest

    parent = ((read_manifest(package, verify=False).get("lineage") or {}).get("parent")) or None
    if isinstance(parent, dict) and parent.get("path"):
        return Path(parent["path"])
    return None
