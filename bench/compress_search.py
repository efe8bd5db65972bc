"""The latency-budget search at full scale: Pareto front and chosen package for one teacher.

    python bench/compress_search.py PACKAGE --target-latency-ms 2 --max-accuracy-drop 1.0 \
        [--layers 6 4 3] [--prune 0.0 0.4] [--quantizations int8] [--output DIR] \
        [distill.epochs=3 distill.precision=bf16 ...]

PACKAGE is a trained text package whose manifest records its recipe (the sentiment recipe's
``<run_dir>/package``). The search (``kiln.compress.search``) trims the vocabulary, distils each
student depth, prunes each fraction, exports and quantizes, measures every candidate on the
validation examples (accuracy, p50 latency at batch 1 on one thread) and skips branches that
cannot win. Prints every candidate, what was skipped and why, the front and the choice, with the
wall time of the whole search; ``DIR/search.json`` holds the same.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--target-latency-ms", type=float, required=True)
    parser.add_argument("--max-accuracy-drop", type=float, required=True, help="accuracy points")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="student depths")
    parser.add_argument("--prune", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--quantizations", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--output", type=Path, default=Path("bench-compress-search"))
    parser.add_argument("overrides", nargs="*", help="compress settings, e.g. distill.epochs=3")
    args = parser.parse_intermixed_args()

    from kiln.compress.search import SearchConfig, search
    from kiln.config.loader import apply_overrides
    from kiln.config.schema import CompressConfig

    cfg = CompressConfig.parse(apply_overrides({}, args.overrides), source="overrides")
    budget = SearchConfig.parse(
        {
            "target_latency_ms": args.target_latency_ms,
            "max_accuracy_drop": args.max_accuracy_drop,
            "student_layers": tuple(args.layers) if args.layers else None,
            "prune_fractions": tuple(args.prune),
            "quantizations": tuple(args.quantizations),
            "max_candidates": args.candidates,
        },
        source="command line",
    )
    start = time.perf_counter()
    result = search(args.package, output_dir=args.output, budget=budget, config=cfg)
    wall = time.perf_counter() - start
    teacher = result.teacher
    print(
        f"teacher: accuracy {teacher['accuracy']:.4f}, p50 {teacher['latency_p50_ms']:.2f} ms, "
        f"{teacher['size_bytes'] / 1e6:.2f} MB (validation examples, 1 thread)"
    )
    print(f"{'candidate':<16}{'acc':>8}{'Δ pts':>8}{'p50 ms':>9}{'MB':>8}  meets  pareto")
    for c in result.candidates:
        meets = ("L" if c["meets_latency"] else "-") + ("A" if c["meets_accuracy"] else "-")
        print(
            f"{c['id']:<16}{c['accuracy']:>8.4f}{-c['accuracy_drop_points']:>8.2f}"
            f"{c['latency_p50_ms']:>9.2f}{c['size_bytes'] / 1e6:>8.2f}  {meets:<5}  {'*' if c['pareto'] else ''}"
        )
    for s in result.skipped:
        print(f"skipped {s['id']}: {s['reason']}")
    print(f"pareto front: {', '.join(result.pareto)}")
    if result.chosen is not None:
        c = result.chosen
        print(
            f"chosen: {c['id']} ({c['size_ratio']:.2f}x smaller, {c['latency_ratio']:.2f}x faster "
            f"at batch 1 than the teacher, {-c['accuracy_drop_points']:+.2f} points)"
        )
    else:
        print(f"no candidate met the budget: {result.failure}")
    print(f"search took {wall:.0f} s; report: {result.report}")


if __name__ == "__main__":
    main()
