"""The evaluation stage: ``run(config) -> EvalResult`` scores a package on held-out data.

Classifiers get accuracy and calibration on labelled data, recommenders ranking metrics, and
text-generation packages perplexity, ROUGE-L and exact match (``kiln.evaluate.generation``).
Predictions go through ``kiln.runtime`` — the same code that serves the model — so the numbers
here are the numbers users get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import DataError

SPEED_SAMPLES = 128  # evaluation inputs cycled through when timing


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and on which data."""

    package: Path  # the package folder
    data_file: Path | None = None  # a labelled user file; default: the test split of the package's recipe
    text_column: str = "text"  # column with the input text (text-generation: documents) in data_file
    label_column: str = "label"  # column with the label in data_file
    prompt_column: str = "prompt"  # text-generation: column with the prompt in data_file
    response_column: str = "response"  # text-generation: column with the reference response in data_file
    encoding: str = "utf-8"  # encoding of data_file
    output_dir: Path | None = None  # where report.json and confusion_matrix.png go
    batch_size: int = 64  # inputs per predict call (text-generation: prompts per generate call)
    ece_bins: int = 15  # confidence bins for the expected calibration error
    measure_speed: bool = False  # also report latency, throughput, size on disk and peak memory
    num_threads: int | None = None  # intra-op threads while timing; the library default if empty
    # Label of out-of-scope rows in data_file (support packages); empty: the package's app.out_of_scope.label.
    oos_label: str | None = None


@dataclass(frozen=True)
class EvalResult:
    """The report and where it was written."""

    report: dict[str, Any]
    output_dir: Path


def run(cfg: EvaluationConfig) -> EvalResult:
    """Load the package, predict on the evaluation data, compute metrics, write the report."""
    from kiln.evaluate.metrics import classification_report, plot_confusion_matrix
    from kiln.evaluate.speed import measure_package
    from kiln.runtime import load_classifier, load_recommender
    from kiln.runtime.package import read_manifest

    manifest = read_manifest(cfg.package)
    if manifest.get("task") == "recommendation":
        return _run_ranking(cfg, load_recommender(cfg.package))
    if manifest.get("task") == "text-generation":
        from kiln.evaluate.generation import run_generation

        return run_generation(cfg, manifest)
    inputs, y_true, source, fingerprint_ok = _evaluation_data(cfg, manifest, list(manifest["labels"]))
    has_oos = bool((y_true < 0).any())
    speed = None
    if cfg.measure_speed:
        # Timed before the package is loaded for scoring, so the peak-memory growth is its own.
        speed = measure_package(cfg.package, list(inputs[:SPEED_SAMPLES]), num_threads=cfg.num_threads)
    predictor = load_classifier(cfg.package)
    batches = [predictor.scored(inputs[i : i + cfg.batch_size]) for i in range(0, len(inputs), cfg.batch_size)]
    probs = np.concatenate([b[0] for b in batches])
    inscope = y_true >= 0
    report = classification_report(y_true[inscope], probs[inscope], predictor.labels, cfg.ece_bins)
    report = {
        "package": str(cfg.package),
        "name": predictor.manifest.get("name"),
        "data": source,
        "data_fingerprint_matches": fingerprint_ok,
        **report,
        **({"speed": speed} if speed is not None else {}),
    }
    if has_oos:
        from kiln.evaluate.openset import handed_off, open_intent_report

        oos = None if batches[0][1] is None else np.concatenate([b[1] for b in batches if b[1] is not None])
        off = handed_off(manifest["app"], probs, oos)
        report["open_intent"] = dict(open_intent_report(y_true, probs, off), oos_label=_oos_label(cfg, manifest))
    out = cfg.output_dir or cfg.package.parent / f"{cfg.package.name}-eval"
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(report["confusion_matrix"], predictor.labels, str(out / "confusion_matrix.png"))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return EvalResult(report=report, output_dir=out)


def gate_metrics(
    cfg: EvaluationConfig,
    sample_inputs: list[Any],
    *,
    num_threads: int | None = None,
    latency_runs: int = 100,
    report: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The flat metrics a promotion rule may name, measured on one package.

    Quality on ``cfg``'s data (``quality_metrics``; ``report`` when already computed) and
    ``time_package``'s latency and size: the names of ``kiln.config.rules.METRICS``.
    """
    report = report if report is not None else run(cfg).report
    return {
        **quality_metrics(report),
        **time_package(cfg.package, sample_inputs, num_threads=num_threads, latency_runs=latency_runs),
    }


def quality_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The data-dependent metrics a promotion rule may name, from a report of ``run``.

    Classifiers: accuracy, macro_f1, ece. Text generation: perplexity and loss, and for
    instruction data rouge_l and exact_match.
    """
    if report.get("task") == "text-generation":
        from kiln.evaluate.generation import generation_quality

        return generation_quality(report)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "ece": report["ece"]}


def time_package(
    package: Path, sample_inputs: list[Any], *, num_threads: int | None = None, latency_runs: int = 100
) -> dict[str, float]:
    """Batch-1 latency on ``sample_inputs`` at ``num_threads``, and the size on disk.

    The machine-dependent metrics a promotion rule may name: latency percentiles
    (``p50/p95/p99_latency_ms``) and ``size_mb``; a text-generation package's sample inputs are
    prompts (strings or chat messages), and it adds ``ttft_ms``, ``tpot_ms`` and
    ``tokens_per_s`` (``kiln.evaluate.decode_speed``). The torch thread count is restored afterwards.
    """
    import torch

    from kiln.evaluate.speed import measure_package
    from kiln.runtime.package import read_manifest

    if read_manifest(package, verify=False).get("task") == "text-generation":
        from kiln.evaluate.decode_speed import time_generation_package

        return time_generation_package(package, sample_inputs, num_threads=num_threads, latency_runs=latency_runs)

    threads = torch.get_num_threads()
    try:
        speed = measure_package(
            package,
            sample_inputs,
            num_threads=num_threads,
            batch_sizes=(1,),
            latency_runs=latency_runs,
            min_throughput_s=0.0,
        )
    finally:
        torch.set_num_threads(threads)  # loading with num_threads sets it for the whole process
    latency = speed["latency_ms"]
    return {
        "p50_latency_ms": latency["p50"],
        "p95_latency_ms": latency["p95"],
        "p99_latency_ms": latency["p99"],
        "size_mb": speed["size_bytes"] / 1e6,
    }


def _run_ranking(cfg: EvaluationConfig, predictor: Any) -> EvalResult:
    from kiln.evaluate.ranking import evaluate_recommender

    if cfg.data_file is not None:
        raise DataError("--data is not supported for recommendation packages; they use their recipe's test split")
    report = {
        "package": str(cfg.package),
        "name": predictor.manifest.get("name"),
        **evaluate_recommender(predictor, batch_size=max(cfg.batch_size, 256)),
    }
    out = cfg.output_dir or cfg.package.parent / f"{cfg.package.name}-eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return EvalResult(report=report, output_dir=out)


def _oos_label(cfg: EvaluationConfig, manifest: dict[str, Any]) -> str | None:
    """The label of out-of-scope rows for a support package (None for any other package)."""
    app = manifest.get("app") or {}
    if app.get("kind") != "support":
        return None
    return cfg.oos_label or (app.get("out_of_scope") or {}).get("label") or "oos"


def _evaluation_data(
    cfg: EvaluationConfig, manifest: dict[str, Any], labels: list[str]
) -> tuple[Any, np.ndarray, str, bool | None]:
    from kiln.data.splits import encode_labels

    if cfg.data_file is not None:
        if manifest["task"] != "text-classification":
            raise DataError(
                "--data files are supported for text packages; image packages use their recipe's test split"
            )
        from kiln.data.sources import load_text_file

        raw = load_text_file(
            cfg.data_file,
            fmt=None,
            encoding=cfg.encoding,
            has_header=True,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
        )
        if not raw.labels:
            raise DataError(f"{cfg.data_file}: no labelled rows to evaluate")
        oos_label = _oos_label(cfg, manifest)
        if oos_label is None or oos_label not in raw.labels:
            return raw.inputs, encode_labels(raw.labels, labels, str(cfg.data_file)), str(cfg.data_file), None
        # Out-of-scope rows of a support package's data are labelled -1 (no class of the model).
        is_oos = np.array([label == oos_label for label in raw.labels])
        if is_oos.all():
            raise DataError(f"{cfg.data_file}: every row is labelled {oos_label!r}; in-scope rows are needed too")
        encoded = np.full(len(raw.labels), -1, dtype=np.int64)
        kept = [label for label, oos in zip(raw.labels, is_oos, strict=True) if not oos]
        encoded[~is_oos] = encode_labels(kept, labels, str(cfg.data_file))
        return raw.inputs, encoded, str(cfg.data_file), None

    import kiln.data
    from kiln.config import parse_recipe

    if not manifest.get("recipe"):
        raise DataError(f"{cfg.package}: the package records no recipe; pass --data FILE to evaluate it")
    dataset = kiln.data.run(parse_recipe(manifest["recipe"], source=f"{cfg.package}/kiln.json recipe"))
    if dataset.label_names != labels:
        raise DataError(f"{cfg.package}: the recipe's data now has different labels than the package")
    matches = dataset.fingerprint == manifest.get("data_fingerprint")
    return dataset.test.inputs, dataset.test.labels, f"test split of {dataset.origin}", matches
