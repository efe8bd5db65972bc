"""Turn split indices into model-ready tensors: dynamic padding for text, augmentation for images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from kiln.config.schema import ImageAugmentConfig
from kiln.data.augment import augment_images
from kiln.runtime.preprocessing import ImagePreprocessor, TextPreprocessor


class Features(Protocol):
    """A split that can produce a batch of model inputs for given example indices."""

    def __len__(self) -> int: ...

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]: ...


class TextFeatures:
    """Texts tokenized once up front; each batch is padded only to its own longest text."""

    def __init__(self, preprocessor: TextPreprocessor, texts: list[str]) -> None:
        self.preprocessor = preprocessor
        self.ids = preprocessor.encode(texts)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """Token count of every text."""
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        arrays = self.preprocessor.collate([self.ids[i] for i in index])
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


class ImageFeatures:
    """Images kept on the 0..1 scale; train batches are augmented with the given generator."""

    def __init__(
        self,
        preprocessor: ImagePreprocessor,
        images: Sequence[Any] | np.ndarray,
        augment: ImageAugmentConfig | None = None,
    ) -> None:
        self.preprocessor = preprocessor
        self.unit = preprocessor.to_unit(images)
        self.augment = augment
        self.is_augmented = augment is not None and (augment.max_shift_px > 0 or augment.noise_std > 0)

    def __len__(self) -> int:
        return len(self.unit)

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        unit = self.unit[index]
        if self.is_augmented and rng is not None:
            assert self.augment is not None
            unit = augment_images(unit, self.augment, rng)
        return {k: torch.from_numpy(v) for k, v in self.preprocessor.normalize(unit).items()}


class TokenFeatures:
    """Token sequences of a causal language model: packed text, or rendered conversations whose
    loss mask marks the response tokens. Each batch is padded on the right to its longest sequence."""

    def __init__(self, ids: Sequence[np.ndarray], masks: Sequence[np.ndarray], pad_id: int) -> None:
        self.ids = [np.asarray(x, dtype=np.int64) for x in ids]
        self.masks = [np.asarray(m, dtype=bool) for m in masks]
        self.pad_id = pad_id
        # Position t's logits predict token t + 1: the first token of a sequence is never a target.
        self._targets = np.array([int(m[1:].sum()) for m in self.masks], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """Token count of every sequence."""
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    def targets(self, index: np.ndarray) -> int:
        """How many tokens the sequences at ``index`` contribute to the loss."""
        return int(self._targets[index].sum())

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        width = max(len(self.ids[i]) for i in index)
        input_ids = np.full((len(index), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(index), width), -100, dtype=np.int64)
        attention = np.zeros((len(index), width), dtype=np.int64)
        for row, i in enumerate(index):
            ids, mask = self.ids[i], self.masks[i]
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
            labels[row, : len(ids)] = np.where(mask, ids, -100)
        batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
        if not attention.all():
            # Only a padded batch needs a mask: without one the model takes its plain causal
            # attention path, as a hand-written loop on packed rows does.
            batch["attention_mask"] = torch.from_numpy(attention)
        return batch
