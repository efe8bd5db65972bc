"""The customer-service assistant: intent, a calibrated hand-off threshold, and FAQ answers.

``build_support_package(recipe, classifier, dest)`` takes the trained intent classifier and
writes an app package beside it: the same model and tokenizer, plus the FAQ index and, in the
manifest's ``app`` section, the confidence threshold below which a message goes to a human.

The threshold is calibrated on the validation split: the lowest confidence at which the messages
answered (confidence at or above it) reach ``support.target_accuracy`` (selective classification,
Geifman & El-Yaniv 2017). An accurate classifier is confident on nearly everything, messages for
which no intent exists included, so a second score measures how unlike every known intent a
message is (``kiln.runtime.outofscope``); its statistics go into the package and its threshold is
calibrated under the open-intent protocol (``kiln.apps.outofscope``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.apps.outofscope import Scored, calibrate, handoff_rate
from kiln.config.schema import OutOfScopeConfig, Recipe
from kiln.errors import DataError
from kiln.runtime.outofscope import softmax

if TYPE_CHECKING:
    from kiln.data.splits import Split
    from kiln.runtime import Predictor


def calibrate_threshold(confidence: np.ndarray, is_correct: np.ndarray, target_accuracy: float) -> float:
    """The lowest confidence threshold whose answered examples reach ``target_accuracy``.

    Returns a threshold above every confidence (hand off everything) when even the most
    confident example alone misses the target.
    """
    order = np.argsort(-confidence, kind="stable")
    answered_accuracy = np.cumsum(is_correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(answered_accuracy >= target_accuracy)
    if len(ok) == 0:
        return float(np.nextafter(confidence.max(), np.inf))
    return float(confidence[order][ok.max()])


def handoff_report(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Hand-off rate and the accuracy of the messages answered, at ``threshold``."""
    confidence = probs.max(axis=1)
    answered = confidence >= threshold
    correct = probs.argmax(axis=1) == labels
    return {
        "handoff_rate": float(1.0 - answered.mean()),
        "answered_accuracy": float(correct[answered].mean()) if answered.any() else 0.0,
    }


def build_support_package(recipe: Recipe, classifier: Path, dest: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrate the hand-off threshold, index the FAQ, write the app package.

    Returns the app package's manifest and the report (threshold, hand-off on the test split).
    """
    import kiln.data
    from kiln.apps.grounded import grounding_section, resolve_chat_package
    from kiln.data.faq import load_faq
    from kiln.data.tokenizer import resolve_pretrained
    from kiln.runtime import load_classifier
    from kiln.runtime.package import finalize_package, package_digest, staged_package
    from kiln.runtime.retrieval import SentenceEncoder, write_faq_index

    assert recipe.support is not None
    cfg = recipe.support
    chat = resolve_chat_package(cfg.chat_package) if cfg.chat_package else None
    predictor = load_classifier(classifier)
    dataset = kiln.data.run(recipe)
    examples = _out_of_scope_examples(cfg.out_of_scope, recipe.data.text_column)
    val = _scored(predictor, dataset.validation)
    val_probs = softmax(val.logits)
    threshold = calibrate_threshold(
        val_probs.max(axis=1), val_probs.argmax(axis=1) == dataset.validation.labels, cfg.target_accuracy
    )
    test = _scored(predictor, dataset.test)
    report: dict[str, Any] = {
        "threshold": threshold,
        "target_accuracy": cfg.target_accuracy,
        "validation": handoff_report(val_probs, dataset.validation.labels, threshold),
        "test": handoff_report(softmax(test.logits), dataset.test.labels, threshold),
    }
    calibration = None
    if cfg.out_of_scope is not None:
        scored_examples = None
        if examples:
            ex_logits, ex_emb = _forward(predictor, examples)
            scored_examples = Scored(ex_logits, ex_emb, np.full(len(examples), -1))
        calibration = calibrate(
            cfg.out_of_scope,
            train=_scored(predictor, dataset.train),
            validation=val,
            examples=scored_examples,
            seed=recipe.seed,
        )
        test_oos = calibration.scorer.score(test.logits, test.embeddings)
        report["out_of_scope"] = dict(
            calibration.report, test_inscope_handoff=handoff_rate(test_oos, calibration.threshold)
        )
    questions, answers = load_faq(cfg.faq_file)
    encoder = SentenceEncoder(resolve_pretrained(cfg.encoder))
    parent = predictor.manifest
    with staged_package(dest) as staging:
        for rel in parent["files"]:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(classifier / rel, staging / rel)
        write_faq_index(staging, questions, answers, encoder)
        if calibration is not None:
            calibration.scorer.save(staging)
        manifest = {k: v for k, v in parent.items() if k not in ("files", "schema_version", "kiln_version")}
        manifest["lineage"] = {
            "parent": {"path": str(classifier.resolve()), "digest": package_digest(parent)},
            "transformation": "support-app",
            "settings": cfg.model_dump(mode="json"),
        }
        manifest["app"] = {
            "kind": "support",
            "handoff_threshold": threshold,
            "min_answer_score": cfg.min_answer_score,
            "encoder": cfg.encoder,
            "faq": {"pairs": len(questions), "origin": cfg.faq_file or "chatterbot-corpus English"},
        }
        if calibration is not None and cfg.out_of_scope is not None:
            manifest["app"]["out_of_scope"] = dict(
                calibration.scorer.describe(), threshold=calibration.threshold, label=cfg.out_of_scope.label
            )
        if chat is not None:
            manifest["app"]["grounding"] = grounding_section(cfg, chat)
            manifest["lineage"]["chat"] = {"reference": chat.reference, "digest": chat.digest}
        manifest["metrics"] = dict(parent.get("metrics", {}), support=report)
        full = finalize_package(staging, manifest)
    return full, report


def _forward(predictor: Predictor, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits and pooled embeddings (None when the model has none) of ``texts``, in batches."""
    parts = [predictor.logits_and_embedding(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    logits = np.concatenate([p[0] for p in parts])
    embeddings = [p[1] for p in parts]
    if any(e is None for e in embeddings):
        return logits, None
    return logits, np.concatenate([e for e in embeddings if e is not None])


def _scored(predictor: Predictor, split: Split) -> Scored:
    logits, embeddings = _forward(predictor, list(split.inputs))
    return Scored(logits, embeddings, np.asarray(split.labels))


def _out_of_scope_examples(cfg: OutOfScopeConfig | None, text_column: str) -> list[str]:
    """The texts of ``support.out_of_scope.examples_file`` (none when unset).

    Raises:
        DataError: the file is missing, has no ``text_column`` or no texts.
    """
    if cfg is None or cfg.examples_file is None:
        return []
    from kiln.data.sources import read_table

    path = cfg.examples_file
    frame = read_table(path, fmt=None, encoding="utf-8", has_header=True)
    if text_column not in frame.columns:
        raise DataError(
            f"support.out_of_scope.examples_file {path}: column {text_column!r} (data.text_column) not found; "
            f"columns are {', '.join(map(str, frame.columns))}"
        )
    texts = [t.strip() for t in frame[text_column].dropna().astype(str) if t.strip()]
    if not texts:
        raise DataError(f"support.out_of_scope.examples_file {path}: no texts in column {text_column!r}")
    return texts
