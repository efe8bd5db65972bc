"""Per-input statistics of raw inputs, computed the same way for the reference and live traffic.

Text: token length, unknown-token rate and a low-dimensional projection (PCA, fitted on the
validation split) of the encoder's pooled embedding. Images: mean and spread of pixel
intensity, plus a pixel-intensity histogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.runtime.predictor import Predictor
from kiln.runtime.preprocessing import ImagePreprocessor, TextPreprocessor

PIXEL_BINS = 16  # pixel-intensity histogram bins on the 0..1 scale


@dataclass(frozen=True)
class Projection:
    """A PCA projection: ``(x - mean) @ components.T``."""

    mean: np.ndarray  # (dim,)
    components: np.ndarray  # (k, dim)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """Project embeddings (n, dim) to (n, k)."""
        return (embeddings - self.mean) @ self.components.T

    def to_json(self) -> dict[str, Any]:
        """JSON form stored in a profile."""
        return {"mean": self.mean.round(6).tolist(), "components": self.components.round(6).tolist()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Projection:
        """Read the JSON form back."""
        return cls(np.asarray(raw["mean"], dtype=np.float64), np.asarray(raw["components"], dtype=np.float64))


def fit_projection(embeddings: np.ndarray, dims: int) -> Projection:
    """PCA of embeddings (n, dim) keeping ``dims`` components (fewer when n or dim is smaller)."""
    mean = embeddings.mean(axis=0)
    centred = embeddings - mean
    k = max(1, min(dims, centred.shape[0] - 1, centred.shape[1]))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return Projection(mean=mean, components=vt[:k])


def numeric_features(
    predictor: Predictor, inputs: Sequence[Any], projection: Projection | None
) -> dict[str, np.ndarray]:
    """Numeric statistics per input: ``length``/``unk_rate``/``emb_i`` for text, intensities for images."""
    if predictor.manifest["preprocessing"]["kind"] == "text":
        return _text_features(predictor, inputs, projection)
    assert isinstance(predictor.preprocessor, ImagePreprocessor)
    unit = predictor.preprocessor.to_unit(inputs)
    flat = unit.reshape(len(unit), -1)
    return {"mean_intensity": flat.mean(axis=1), "std_intensity": flat.std(axis=1)}


def pixel_counts(predictor: Predictor, inputs: Sequence[Any]) -> np.ndarray | None:
    """Pixel-intensity histogram counts over all images (None for text)."""
    if predictor.manifest["preprocessing"]["kind"] != "image":
        return None
    assert isinstance(predictor.preprocessor, ImagePreprocessor)
    unit = predictor.preprocessor.to_unit(inputs)
    counts, _ = np.histogram(np.clip(unit, 0.0, 1.0), bins=PIXEL_BINS, range=(0.0, 1.0))
    return counts


def embeddings_of(predictor: Predictor, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray | None:
    """Pooled embeddings in batches; None when the package's engine cannot pool."""
    parts = []
    for start in range(0, len(inputs), batch_size):
        emb = predictor.embed(list(inputs[start : start + batch_size]))
        if emb is None:
            return None
        parts.append(emb.astype(np.float64))
    return np.concatenate(parts) if parts else None


def _text_features(predictor: Predictor, texts: Sequence[Any], projection: Projection | None) -> dict[str, np.ndarray]:
    assert isinstance(predictor.preprocessor, TextPreprocessor)
    tokenizer = predictor.preprocessor.tokenizer
    unk_id = tokenizer.token_to_id("[UNK]")
    encodings = tokenizer.encode_batch([str(t) for t in texts])
    # Markers the tokenizer adds ([CLS]/[SEP] for BERT, <s>/</s> for MPNet) are not words.
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special} - {unk_id}
    lengths, unk = [], []
    for enc in encodings:
        words = [i for i in enc.ids if i not in special]
        lengths.append(len(words))
        unk.append(sum(1 for i in words if i == unk_id) / len(words) if words else 0.0)
    out = {"length": np.asarray(lengths, dtype=np.float64), "unk_rate": np.asarray(unk, dtype=np.float64)}
    if projection is not None:
        emb = embeddings_of(predictor, texts)
        if emb is not None:
            projected = projection.apply(emb)
            for i in range(projected.shape[1]):
                out[f"emb_{i}"] = projected[:, i]
    return out
