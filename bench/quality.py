"""Quality of Kiln's recipes on held-out test splits, with wall time and peak memory.

Each recipe runs as `kiln run RECIPE` in its own process (under /usr/bin/time for peak RSS);
the same test split is scored by a TF-IDF + logistic regression baseline (pixels + logistic
regression for images) in this process, so every row compares against a baseline on the
identical split.

    python bench/quality.py [sentiment intent finance digits] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"sentiment": 0.80, "intent": 0.90, "finance": 0.85, "digits": 0.97}


def text_baseline() -> Any:
    """TF-IDF (1-2 grams) + logistic regression, the lexical baseline every text row compares with."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True), LogisticRegression(max_iter=2000, C=10)
    )


def baseline_accuracy(recipe_path: Path) -> float:
    import kiln.data
    from kiln.config import load_recipe

    data = kiln.data.run(load_recipe(recipe_path))
    if data.kind == "text":
        model = text_baseline()
        model.fit(list(data.train.inputs), data.train.labels)
        return float(model.score(list(data.test.inputs), data.test.labels))
    from sklearn.linear_model import LogisticRegression

    flat = lambda x: x.reshape(len(x), -1) / data.image_max_value  # noqa: E731
    model = LogisticRegression(max_iter=2000)
    model.fit(flat(data.train.inputs), data.train.labels)
    return float(model.score(flat(data.test.inputs), data.test.labels))


def run_recipe(name: str, home: Path) -> dict:
    recipe = ROOT / "recipes" / f"{name}.yaml"
    env = dict(os.environ, KILN_HOME=str(home))
    kiln = [sys.executable, "-m", "kiln.cli.main"]
    cmd = ["/usr/bin/time", "-v", *kiln, "run", str(recipe), "train.progress=false", "--json"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name}: kiln run failed:\n{proc.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    trained = json.loads(proc.stdout)["packages"][0]
    report = json.loads((Path(trained["eval_dir"]) / "report.json").read_text())
    manifest = json.loads((Path(trained["path"]) / "kiln.json").read_text())
    return {
        "recipe": name,
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_f1"],
        "n_test": report["n"],
        "p99_latency_ms": trained["metrics"]["p99_latency_ms"],
        "wall_s": round(wall_s, 1),
        "peak_rss_mib": round(peak_kb / 1024),
        "train_steps": manifest["lineage"]["settings"]["steps"],
        "train_samples_per_s": manifest["training"]["samples_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(TARGETS))
    parser.add_argument("--home", type=Path, default=None, help="KILN_HOME for the runs (default: a temp folder)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="kiln-quality-"))
    print(f"KILN_HOME={home}; cores={os.cpu_count()}")
    for name in args.recipes:
        row = run_recipe(name, home)
        row["baseline_accuracy"] = round(baseline_accuracy(ROOT / "recipes" / f"{name}.yaml"), 4)
        row["target"] = TARGETS.get(name)
        row["meets_target"] = row["target"] is None or row["test_accuracy"] >= row["target"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
