"""Out-of-scope scores: far inputs score higher, and statistics survive the package round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.errors import PackageError
from kiln.runtime.outofscope import METHODS, fit_scorer, load_scorer


def clusters(rng: np.random.Generator, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three tight Gaussian classes in 8 dimensions; logits are negative distances to the centres."""
    centres = np.eye(3, 8) * 6.0
    labels = rng.integers(0, 3, size=n)
    x = centres[labels] + rng.normal(scale=0.5, size=(n, 8))
    return x, labels, -np.linalg.norm(x[:, None, :] - centres[None], axis=2)


@pytest.mark.parametrize("method", METHODS)
def test_score_is_higher_for_an_input_between_every_class(method: str) -> None:
    rng = np.random.default_rng(0)
    x, labels, logits = clusters(rng)
    scorer = fit_scorer(method, x, labels, k=3)
    inside = scorer.score(logits[:10], x[:10])
    between = np.full((1, 8), 2.0)  # equally far from every centre
    between_logits = -np.linalg.norm(between[:, None, :] - np.eye(3, 8)[None] * 6.0, axis=2)
    assert scorer.score(between_logits, between)[0] > inside.max()


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_saved_statistics_give_the_same_scores(tmp_path: Path, method: str) -> None:
    rng = np.random.default_rng(1)
    x, labels, logits = clusters(rng)
    scorer = fit_scorer(method, x, labels, k=5)
    assert scorer.save(tmp_path) == ["out_of_scope.safetensors"]
    loaded = load_scorer(tmp_path, scorer.describe())
    np.testing.assert_allclose(loaded.score(logits, x), scorer.score(logits, x), rtol=1e-4, atol=1e-4)


def test_distance_scores_need_embeddings_and_known_methods() -> None:
    x, labels, logits = clusters(np.random.default_rng(2))
    with pytest.raises(ValueError, match="needs the model's pooled embeddings"):
        fit_scorer("knn", None, labels)
    with pytest.raises(ValueError, match="must be one of"):
        fit_scorer("odin", x, labels)
    with pytest.raises(ValueError, match="needs the model's pooled embeddings"):
        fit_scorer("mahalanobis", x, labels).score(logits, None)


def test_load_scorer_names_a_missing_statistics_file(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="out_of_scope.safetensors are missing"):
        load_scorer(tmp_path, {"method": "knn", "file": "out_of_scope.safetensors"})
    with pytest.raises(PackageError, match="method must be one of"):
        load_scorer(tmp_path, {"method": "nope"})
