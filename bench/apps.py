"""The applications at full scale: each recipe's measured results, as Markdown for RESULTS.md.

    python bench/apps.py [--only recommend digits support finance support-generate support-oos] [--home DIR]
        [--questions 48] [--data DIR]

- recommend: popularity, BPR-MF and two-tower on MovieLens-100k (leave-last-out, full ranking),
  and the two-tower package with int8 embedding tables; checks the target (two-tower NDCG@10
  >= 1.3x popularity and above BPR-MF).
- digits: the MNIST-5k CNN, then the recipe's compression (magnitude pruning to 50% sparsity,
  ONNX export, dynamic int8), each package evaluated on the test split.
- support / finance: the BANKING77 intent and Financial PhraseBank sentiment recipes; support
  then runs support-oos.
- support-oos: out-of-scope detection on BANKING77 under the open-intent protocol (25/50/75% of
  the intents known, three seeds), each score against the softmax threshold (bench/open_intent.py).
- support-generate (not run by default): the support recipe's FAQ answered by SmolLM2-135M-Instruct
  from the top retrieved entries against the nearest answer verbatim, on ``--questions`` held-out
  paraphrases (ROUGE-L and key facts; see bench/support_answers.py for the protocol).

Runs write under --home (default: a temporary folder). Minutes on 2 CPU cores per application.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from open_intent import bench_open_intent
from support_answers import bench_support_generate

ROOT = Path(__file__).resolve().parents[1]
APPS = ("recommend", "digits", "support", "finance")
SECTIONS = (*APPS, "support-generate", "support-oos")


def run_recipe(name: str, home: Path, *overrides: str) -> tuple[Any, float]:
    """Train and evaluate ``recipes/<name>.yaml`` with overrides; return (result, seconds)."""
    from kiln.config import load_recipe
    from kiln.pipeline import run_pipeline

    tag = "-".join(o.split("=")[1] for o in overrides) or "default"
    recipe = load_recipe(
        ROOT / "recipes" / f"{name}.yaml",
        [*overrides, f"train.output_dir={home / name / tag}", "train.progress=false"],
    )
    start = time.perf_counter()
    result = run_pipeline(recipe)
    return result, time.perf_counter() - start


def bench_recommend(home: Path) -> list[str]:
    import kiln.evaluate
    from kiln.compress.embeddings import quantize_embedding_tables

    rows, reports = [], {}
    for model in ("popularity", "bpr-mf", "two-tower"):
        result, seconds = run_recipe("recommend", home, f"recommend.model={model}")
        trained = result.packages[0]
        report, _ = _evaluated(trained)
        reports[model] = report
        rows.append((model, report, seconds, _size(trained.path)))
        if model == "two-tower":
            int8_dir = trained.path.parent / "package-int8"
            quantize_embedding_tables(trained.path, int8_dir)
            evaluated = kiln.evaluate.run(kiln.evaluate.EvaluationConfig(package=int8_dir))
            rows.append(("two-tower, int8 embeddings", evaluated.report, 0.0, _size(int8_dir)))
    lines = [
        "### Recommendation: MovieLens-100k, leave-last-out, full ranking (943 users, 1,682 items)",
        "",
        "| model | HR@10 | NDCG@10 | Recall@20 | coverage@10 | package MB | train+eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, report, seconds, size_mb in rows:
        lines.append(
            f"| {model} | {report['hr@10']:.4f} | {report['ndcg@10']:.4f} | {report['recall@20']:.4f} "
            f"| {report['coverage@10']:.4f} | {size_mb:.2f} | {seconds:.0f} |"
        )
    pop, bpr, tt = (reports[m]["ndcg@10"] for m in ("popularity", "bpr-mf", "two-tower"))
    lines += [
        "",
        f"Two-tower NDCG@10 is {tt / pop:.2f}x popularity (target >= 1.30) and "
        f"{'above' if tt > bpr else 'NOT above'} BPR-MF ({tt:.4f} vs {bpr:.4f}).",
    ]
    return lines


def bench_digits(home: Path) -> list[str]:
    result, seconds = run_recipe("digits", home)
    lines = [
        "### Image classification: MNIST 5k CNN",
        "",
        "| package | accuracy | macro-F1 | MB | notes |",
        "|---|---|---|---|---|",
    ]
    for package in result.packages:
        report, manifest = _evaluated(package)
        sparsity = manifest["metrics"].get("sparsity")
        note = f"sparsity {sparsity['reached']:.3f} of the conv/linear weights" if sparsity else ""
        lines.append(
            f"| {package.step} ({manifest['format']} {manifest['precision']}) | {report['accuracy']:.4f} "
            f"| {report['macro_f1']:.4f} | {_size(package.path):.2f} | {note} |"
        )
    lines.append(f"\n`kiln run` (train, compress, evaluate every package, register): {seconds:.0f} s.")
    return lines


def bench_classifier(name: str, title: str, home: Path) -> list[str]:
    result, seconds = run_recipe(name, home)
    lines = [
        f"### {title}",
        "",
        "| package | accuracy | macro-F1 | ECE | test n | p99 ms (batch 1) | MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for package in result.packages:
        report, manifest = _evaluated(package)
        lines.append(
            f"| {package.step} ({manifest['format']} {manifest['precision']}) | {report['accuracy']:.4f} "
            f"| {report['macro_f1']:.4f} | {report['ece']:.4f} | {report['n']} "
            f"| {package.metrics['p99_latency_ms']:.2f} | {_size(package.path):.2f} |"
        )
    lines.append(f"\n`kiln run` (train, compress, evaluate every package, register): {seconds:.0f} s.")
    if result.app_report is not None:  # the support app: hand-off calibration
        support = result.app_report
        lines.append(
            f"\nHand-off threshold {support['threshold']:.3f} (calibrated on validation for "
            f"{support['target_accuracy']:.0%} answered accuracy): test hand-off rate "
            f"{support['test']['handoff_rate']:.3f}, accuracy of answered messages "
            f"{support['test']['answered_accuracy']:.4f}."
        )
    return lines


def _evaluated(package: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The evaluation report `kiln run` wrote for a package of its result, and its manifest."""
    from kiln.runtime.package import read_manifest

    return json.loads((package.eval_dir / "report.json").read_text()), read_manifest(package.path, verify=False)


def _size(package: Path) -> float:
    from kiln.runtime.package import read_manifest

    manifest = read_manifest(package, verify=False)
    return sum((package / rel).stat().st_size for rel in manifest["files"]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(APPS))
    parser.add_argument("--questions", type=int, default=48, help="held-out questions of support-generate")
    parser.add_argument("--home", type=Path, default=None, help="where runs go (default: a temporary folder)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="holds banking77/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp)
        sections = {
            "recommend": lambda: bench_recommend(home),
            "digits": lambda: bench_digits(home),
            "support": lambda: [
                *bench_classifier("support", "Customer-service intent: BANKING77", home),
                "",
                *bench_open_intent(home, args.data),
            ],
            "finance": lambda: bench_classifier("finance", "Financial news sentiment: Financial PhraseBank", home),
            "support-generate": lambda: bench_support_generate(home, count=args.questions),
            "support-oos": lambda: bench_open_intent(home, args.data),
        }
        for app in args.only:
            print("\n".join(sections[app]()), flush=True)
            print()


if __name__ == "__main__":
    main()
