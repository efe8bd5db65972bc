"""Compare fp32 PyTorch, ONNX fp32 and ONNX int8 on one package, side by side in one run.

    python bench/compress.py [PACKAGE] [--threads 2] [--seconds 1.0]

Without PACKAGE it builds an untrained BERT-mini text classifier (speed does not depend on the
weights' values). With PACKAGE, its recipe's data supplies the check and calibration inputs.
Prints each package's latency, throughput and size, and the ratios against PyTorch fp32.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

TEXTS = [
    "the film was a delight from start to finish, with wonderful acting throughout",
    "a dull and lifeless script with nothing to say and far too long a running time",
    "one of the best movies of the year",
    "i want those two hours of my life back",
] * 8


def build_package(dest: Path) -> Path:
    """An untrained BERT-mini text classifier with a WordPiece tokenizer."""
    import torch

    from kiln.data.tokenizer import train_wordpiece
    from kiln.runtime.architectures import bert_config, build_text_classifier
    from kiln.runtime.weights import write_torch_package

    torch.manual_seed(0)
    tok = train_wordpiece(TEXTS * 10, vocab_size=2000, dest=dest.parent / "tokenizer.json")
    config = bert_config(size="mini", vocab_size=2000, num_labels=2, max_length=128, dropout=0.0)
    write_torch_package(
        dest,
        model=build_text_classifier(config).eval(),
        architecture={"family": "hf"},
        manifest={
            "name": "bench-mini",
            "task": "text-classification",
            "labels": ["neg", "pos"],
            "input_schema": {"kind": "text"},
            "preprocessing": {
                "kind": "text",
                "tokenizer_file": "tokenizer.json",
                "max_length": 128,
            },
            "precision": "fp32",
            "lineage": {"parent": None, "transformation": "bench", "settings": {}},
            "metrics": {},
            "recipe": {},
        },
        extra_files={"tokenizer.json": tok},
    )
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description="fp32 torch vs ONNX fp32 vs ONNX int8")
    parser.add_argument("package", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per batch size")
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()

    import torch

    import kiln.compress
    from kiln.evaluate.speed import measure_package

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    package = args.package or build_package(work / "fp32")
    examples = None
    if args.package is None:
        examples = kiln.compress.Examples(
            eval_inputs=TEXTS, eval_labels=None, train_inputs=TEXTS, train_labels=None
        )
    result = kiln.compress.run(
        package, output_dir=work / "out", steps=["onnx", "quantize-dynamic"], examples=examples
    )
    candidates = {
        "torch-fp32": package,
        "onnx-fp32": result.packages[0],
        "onnx-int8": result.packages[1],
    }
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    rows = {
        name: measure_package(
            path,
            TEXTS,
            num_threads=args.threads,
            batch_sizes=sizes,
            latency_runs=30,
            min_throughput_s=args.seconds,
        )
        for name, path in candidates.items()
    }
    base = rows["torch-fp32"]
    header = " ".join(f"{'inputs/s@' + str(b):>12}" for b in sizes)
    print(f"{'package':<12} {'p50 ms':>8} {'p95 ms':>8} {'size MB':>8} {header}")
    for name, row in rows.items():
        thr = " ".join(f"{row['throughput'][str(b)]:>12.1f}" for b in sizes)
        lat = row["latency_ms"]
        print(
            f"{name:<12} {lat['p50']:>8.2f} {lat['p95']:>8.2f} "
            f"{row['size_bytes'] / 1e6:>8.2f} {thr}"
        )
    print("ratios against torch-fp32 (higher is better)")
    for name, row in rows.items():
        ratio = {
            "p50_speedup": base["latency_ms"]["p50"] / row["latency_ms"]["p50"],
            "size_reduction": base["size_bytes"] / row["size_bytes"],
            **{
                f"throughput_x@{b}": row["throughput"][str(b)] / base["throughput"][str(b)]
                for b in sizes
            },
        }
        print(name, json.dumps({k: round(v, 2) for k, v in ratio.items()}))
    print("int8 agreement:", json.dumps(result.manifests[1]["metrics"]["agreement"]))


if __name__ == "__main__":
    main()
