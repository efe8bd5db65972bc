"""Chain distill -> prune -> vocab -> onnx -> int8 on a trained package and compare every step.

    python bench/compress_pipeline.py PACKAGE [--output DIR] [--threads 2] \
        [--steps distill,prune,vocab,onnx,quantize-dynamic] [--alone int8,prune] \
        [distill.epochs=3 prune.heads_fraction=0.5 ...]

PACKAGE is a trained text package whose manifest records its recipe (e.g. the sentiment recipe's
``<run_dir>/package``); the recipe's data trains the student and its test split scores every
package. The teacher and each step's package are measured side by side in the same process on
the same inputs: accuracy on the test split, p50 latency at batch 1, throughput at batch 32
and size on disk (best of --rounds round-robin passes), with the ratios against the teacher.
``--alone`` also applies single techniques to the teacher with the same settings (int8: ONNX +
dynamic int8; distill; prune), measured in the same passes, to set each beside the chain.
Results go to ``DIR/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_STEPS = "distill,prune,vocab,onnx,quantize-dynamic"
ALONE = {"int8": ["onnx", "quantize-dynamic"], "distill": ["distill"], "prune": ["prune"]}


def measure(path: Path, threads: int, out: Path, seconds: float) -> dict[str, Any]:
    """Accuracy on the recipe's test split (through ``kiln.evaluate``) plus speed and size."""
    import kiln.evaluate
    from kiln.evaluate.speed import measure_package

    report = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(package=path, output_dir=out / "reports" / f"{path.parent.name}-{path.name}")
    ).report
    inputs = _test_inputs(path)
    speed = measure_package(
        path, inputs, num_threads=threads, batch_sizes=(1, 32), min_throughput_s=seconds
    )
    return {
        "package": str(path),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "latency_p50_ms": speed["latency_ms"]["p50"],
        "throughput_32": speed["throughput"]["32"],
        "size_bytes": speed["size_bytes"],
    }


def _test_inputs(path: Path) -> list[Any]:
    import kiln.data
    from kiln.config import parse_recipe
    from kiln.runtime.package import read_manifest

    recipe = parse_recipe(read_manifest(path)["recipe"], source=f"{path}/kiln.json recipe")
    return list(kiln.data.run(recipe).test.inputs[:256])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path, help="trained text package with a recipe")
    parser.add_argument("--output", type=Path, default=Path("bench-compress-pipeline"))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads when timing")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated compress steps")
    parser.add_argument("--alone", default="", help=f"also alone from the teacher: {','.join(ALONE)}")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per batch size")
    parser.add_argument("--rounds", type=int, default=2, help="timing passes over all packages")
    parser.add_argument("overrides", nargs="*", help="compress settings, e.g. distill.epochs=3")
    args = parser.parse_intermixed_args()

    import torch

    import kiln.compress
    from kiln.config.loader import apply_overrides
    from kiln.config.schema import CompressConfig

    cfg = CompressConfig.model_validate(apply_overrides({}, args.overrides))
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    start = time.perf_counter()
    result = kiln.compress.run(args.package, output_dir=args.output / "chain", config=cfg, steps=steps)
    compress_s = time.perf_counter() - start
    paths = [args.package, *result.packages]
    names = ["teacher"] + [f"chain:{m['lineage']['transformation']}" for m in result.manifests]
    for name in [a.strip() for a in args.alone.split(",") if a.strip()]:
        alone = kiln.compress.run(
            args.package, output_dir=args.output / f"alone-{name}", config=cfg, steps=ALONE[name]
        )
        paths.append(alone.packages[-1])
        names.append(f"alone:{name}")
    torch.set_num_threads(args.threads)

    # Every package is timed in --rounds round-robin passes and keeps its best p50 and
    # throughput, so none is favoured by when it ran (warm-up, a noisy neighbour on the CPUs).
    rows: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for i, path in enumerate(paths):
            row = measure(path, args.threads, args.output, args.seconds)
            if round_index == 0:
                rows.append(dict(row, step=names[i]))
                continue
            rows[i]["latency_p50_ms"] = min(rows[i]["latency_p50_ms"], row["latency_p50_ms"])
            rows[i]["throughput_32"] = max(rows[i]["throughput_32"], row["throughput_32"])
    teacher = rows[0]
    for row in rows:
        row["accuracy_change_points"] = 100 * (row["accuracy"] - teacher["accuracy"])
        row["speedup_p50"] = teacher["latency_p50_ms"] / row["latency_p50_ms"]
        row["throughput_32_ratio"] = row["throughput_32"] / teacher["throughput_32"]
        row["size_ratio"] = teacher["size_bytes"] / row["size_bytes"]

    print(
        f"{'step':<24}{'acc':>8}{'Δ pts':>8}{'p50 ms':>9}{'x p50':>7}"
        f"{'/s@32':>9}{'x @32':>7}{'MB':>8}{'x size':>8}"
    )
    for r in rows:
        print(
            f"{r['step']:<24}{r['accuracy']:>8.4f}{r['accuracy_change_points']:>8.2f}"
            f"{r['latency_p50_ms']:>9.2f}{r['speedup_p50']:>7.2f}{r['throughput_32']:>9.0f}"
            f"{r['throughput_32_ratio']:>7.2f}{r['size_bytes'] / 1e6:>8.2f}{r['size_ratio']:>8.2f}"
        )
    payload = {
        "package": str(args.package),
        "steps": steps,
        "alone": args.alone,
        "threads": args.threads,
        "rounds": args.rounds,
        "compress_wall_s": round(compress_s, 1),
        "settings": cfg.model_dump(mode="json"),
        "rows": rows,
    }
    (args.output / "pipeline.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"compress took {compress_s:.1f} s; results: {args.output / 'pipeline.json'}")


if __name__ == "__main__":
    main()
