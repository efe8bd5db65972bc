"""Seeded, stratified splits, exact-duplicate removal, and the data fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.data.sources import IMAGE, RawData
from kiln.errors import DataError


@dataclass(frozen=True)
class Split:
    """One split: inputs and integer labels indexing the dataset's label names."""

    inputs: list[str] | np.ndarray
    labels: np.ndarray  # int64, shape (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Split:
        """The examples at ``index``, in that order."""
        if isinstance(self.inputs, np.ndarray):
            return Split(self.inputs[index], self.labels[index])
        return Split([self.inputs[i] for i in index], self.labels[index])


def drop_duplicates(raw: RawData) -> RawData:
    """Keep the first occurrence of each exact input (text, or identical pixel array)."""
    seen: set[bytes | str] = set()
    keep: list[int] = []
    for i, item in enumerate(raw.inputs):
        key = item.tobytes() if isinstance(item, np.ndarray) else item
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) == len(raw.labels):
        return raw
    inputs = raw.inputs[keep] if isinstance(raw.inputs, np.ndarray) else [raw.inputs[i] for i in keep]
    return RawData(
        kind=raw.kind,
        inputs=inputs,
        labels=[raw.labels[i] for i in keep],
        origin=raw.origin,
        image_max_value=raw.image_max_value,
    )


def stratified_indices(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with ``fraction`` of every class held out.

    Each class with at least two examples gives at least one to each side, so small classes
    still appear in both.
    """
    kept: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_sample(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about ``count`` examples, keeping class proportions."""
    if count >= len(labels):
        return np.arange(len(labels))
    _, sample = stratified_indices(labels, count / len(labels), rng)
    return sample


def encode_labels(names: Sequence[str], vocabulary: Sequence[str], origin: str) -> np.ndarray:
    """Map label strings to indices in ``vocabulary``; unknown labels are an error."""
    index = {name: i for i, name in enumerate(vocabulary)}
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise DataError(
            f"{origin}: labels {unknown[:5]} do not occur in the training data "
            f"(known: {', '.join(vocabulary[:10])}{'...' if len(vocabulary) > 10 else ''})"
        )
    return np.array([index[n] for n in names], dtype=np.int64)


def fingerprint(splits: dict[str, Split], label_names: Sequence[str], kind: str) -> str:
    """sha256 over the canonical content of every split: its name, labels and inputs in order."""
    digest = hashlib.sha256()
    digest.update(("labels\x1f" + "\x1f".join(label_names) + "\x1e").encode())
    for name in sorted(splits):
        split = splits[name]
        digest.update(f"split\x1f{name}\x1f{len(split)}\x1e".encode())
        digest.update(split.labels.astype("<i8").tobytes())
        if kind == IMAGE:
            digest.update(np.ascontiguousarray(split.inputs, dtype="<f4").tobytes())
        else:
            for text in split.inputs:
                digest.update(text.encode("utf-8") + b"\x1e")
    return "sha256:" + digest.hexdigest()
