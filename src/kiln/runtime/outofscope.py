"""Out-of-scope scores: how unlike every known class an input is, beside the classifier's labels.

Higher means further out of scope. Four families, all computed from one forward pass:

- ``msp``: one minus the maximum softmax probability (Hendrycks & Gimpel 2017), the baseline.
- ``energy``: the negative log-sum-exp of the logits (Liu et al. 2020, "Energy-based
  Out-of-distribution Detection").
- ``mahalanobis``: the smallest Mahalanobis distance of the pooled embedding to a class mean
  under one shared covariance (Lee et al. 2018; Podolskiy et al. 2021 for transformer intent
  classifiers).
- ``knn``: one minus the cosine similarity to the k-th nearest training embedding (Sun et al.
  2022, "Out-of-Distribution Detection with Deep Nearest Neighbors").

The distance scores need statistics of the training embeddings; ``fit_scorer`` computes them when
a package is built and ``save`` stores them in the package (``out_of_scope.safetensors``), so the
runtime scores without the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import PackageError

METHODS = ("msp", "energy", "mahalanobis", "knn")
STATS_FILE = "out_of_scope.safetensors"
# Diagonal added to the shared covariance, as a share of its mean variance, so that it inverts.
_SHRINKAGE = 1e-3


@dataclass(frozen=True)
class OutOfScopeScorer:
    """One out-of-scope score and the training statistics it needs (none for msp/energy)."""

    method: str
    class_means: np.ndarray | None = None  # (classes, dim), mahalanobis
    precision: np.ndarray | None = None  # (dim, dim) inverse shared covariance, mahalanobis
    bank: np.ndarray | None = None  # (examples, dim) unit-norm training embeddings, knn
    k: int = 10  # neighbour whose similarity counts, knn

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"out-of-scope method must be one of {METHODS}, got {self.method!r}")
        # Scores are computed in float64; the statistics are cast once here, not on every call.
        for name in ("class_means", "precision", "bank"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=np.float64))

    @property
    def needs_embedding(self) -> bool:
        """Whether the score reads the pooled embedding (else the logits alone)."""
        return self.method in ("mahalanobis", "knn")

    def score(self, logits: np.ndarray, embeddings: np.ndarray | None) -> np.ndarray:
        """One score per row; higher is further out of scope.

        Raises:
            ValueError: a distance score without embeddings.
        """
        logits = np.asarray(logits, dtype=np.float64)
        if self.method == "msp":
            return np.asarray(1.0 - softmax(logits).max(axis=1))
        if self.method == "energy":
            top = logits.max(axis=1)
            return np.asarray(-(top + np.log(np.exp(logits - top[:, None]).sum(axis=1))))
        if embeddings is None:
            raise ValueError(f"the {self.method} out-of-scope score needs the model's pooled embeddings")
        x = np.asarray(embeddings, dtype=np.float64)
        if self.method == "mahalanobis":
            assert self.class_means is not None and self.precision is not None
            means, precision = self.class_means, self.precision
            xp = x @ precision
            # (x-m)P(x-m) = xPx - 2xPm + mPm for every class at once.
            dist = (xp * x).sum(1)[:, None] - 2 * xp @ means.T + ((means @ precision) * means).sum(1)[None, :]
            return np.asarray(dist.min(axis=1))
        assert self.bank is not None
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = unit @ self.bank.T
        k = min(self.k, sims.shape[1])
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        return np.asarray(1.0 - kth)

    def save(self, folder: Path) -> list[str]:
        """Write the statistics into a package folder; return the files written (none for msp/energy)."""
        from safetensors.numpy import save_file

        tensors = {
            name: np.ascontiguousarray(value, dtype=np.float32)
            for name, value in (("class_means", self.class_means), ("precision", self.precision), ("bank", self.bank))
            if value is not None
        }
        if not tensors:
            return []
        save_file(tensors, str(folder / STATS_FILE))
        return [STATS_FILE]

    def describe(self) -> dict[str, Any]:
        """The manifest's record of this score (method, k, statistics file)."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "knn":
            out["k"] = self.k
        if self.needs_embedding:
            out["file"] = STATS_FILE
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row of ``logits`` (in their dtype)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def fit_scorer(method: str, embeddings: np.ndarray | None, labels: np.ndarray, *, k: int = 10) -> OutOfScopeScorer:
    """The scorer ``method`` with statistics of the training ``embeddings`` (grouped by ``labels``).

    Raises:
        ValueError: an unknown method, or a distance method without embeddings.
    """
    if method not in METHODS:
        raise ValueError(f"out-of-scope method must be one of {METHODS}, got {method!r}")
    if method in ("msp", "energy"):
        return OutOfScopeScorer(method)
    if embeddings is None:
        raise ValueError(f"the {method} out-of-scope score needs the model's pooled embeddings; this model has none")
    x = np.asarray(embeddings, dtype=np.float64)
    if method == "knn":
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return OutOfScopeScorer(method, bank=unit.astype(np.float32), k=k)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(len(x) - len(classes), 1)
    cov += np.eye(cov.shape[0]) * _SHRINKAGE * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    precision = np.linalg.inv(cov).astype(np.float32)
    return OutOfScopeScorer(method, class_means=means.astype(np.float32), precision=precision)


def load_scorer(folder: Path, section: dict[str, Any]) -> OutOfScopeScorer:
    """The scorer a package's ``app.out_of_scope`` section describes.

    Raises:
        PackageError: the section names an unknown method, or its statistics file is missing.
    """
    method = section.get("method")
    if method not in METHODS:
        raise PackageError(f"{folder}: app.out_of_scope.method must be one of {METHODS}, got {method!r}")
    if method in ("msp", "energy"):
        return OutOfScopeScorer(method)
    from safetensors.numpy import load_file

    path = folder / section.get("file", STATS_FILE)
    if not path.is_file():
        raise PackageError(f"{folder}: out-of-scope statistics {path.name} are missing")
    stats = load_file(str(path))
    return OutOfScopeScorer(
        method,
        class_means=stats.get("class_means"),
        precision=stats.get("precision"),
        bank=stats.get("bank"),
        k=int(section.get("k", 10)),
    )
