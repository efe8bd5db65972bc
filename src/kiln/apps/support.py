"""The customer-service assistant: intent, a calibrated hand-off threshold, and FAQ answers.

``build_support_package(recipe, classifier, dest)`` takes the trained intent classifier and
writes an app package beside it: the same model and tokenizer, plus the FAQ index and, in the
manifest's ``app`` section, the confidence threshold below which a message goes to a human.

The threshold is calibrated on the validation split: the lowest confidence at which the messages
answered (confidence at or above it) reach ``support.target_accuracy`` (selective classification,
Geifman & El-Yaniv 2017). Messages unlike any intent score low and are handed off the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.config.schema import Recipe

if TYPE_CHECKING:
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
    val_probs = _probs(predictor, list(dataset.validation.inputs))
    threshold = calibrate_threshold(
        val_probs.max(axis=1), val_probs.argmax(axis=1) == dataset.validation.labels, cfg.target_accuracy
    )
    test_probs = _probs(predictor, list(dataset.test.inputs))
    report = {
        "threshold": threshold,
        "target_accuracy": cfg.target_accuracy,
        "validation": handoff_report(val_probs, dataset.validation.labels, threshold),
        "test": handoff_report(test_probs, dataset.test.labels, threshold),
    }
    questions, answers = load_faq(cfg.faq_file)
    encoder = SentenceEncoder(resolve_pretrained(cfg.encoder))
    parent = predictor.manifest
    with staged_package(dest) as staging:
        for rel in parent["files"]:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(classifier / rel, staging / rel)
        write_faq_index(staging, questions, answers, encoder)
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
        if chat is not None:
            manifest["app"]["grounding"] = grounding_section(cfg, chat)
            manifest["lineage"]["chat"] = {"reference": chat.reference, "digest": chat.digest}
        manifest["metrics"] = dict(parent.get("metrics", {}), support=report)
        full = finalize_package(staging, manifest)
    return full, report


def _probs(predictor: Predictor, texts: list[str], batch_size: int = 64) -> np.ndarray:
    return np.concatenate(
        [predictor.predict_proba(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    )
