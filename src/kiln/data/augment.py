"""Augmentation of training examples: word deletion and swap for text, shift and noise for images.

Text methods follow EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques"): random
deletion and random swap. Everything draws from an explicit generator so runs repeat exactly.
"""

from __future__ import annotations

import numpy as np

from kiln.config.schema import ImageAugmentConfig, TextAugmentConfig


def delete_words(text: str, prob: float, rng: np.random.Generator) -> str:
    """Drop each word with probability ``prob``, keeping at least one."""
    words = text.split()
    if len(words) <= 1:
        return text
    kept = [w for w in words if rng.random() >= prob]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def swap_words(text: str, prob: float, rng: np.random.Generator) -> str:
    """Swap ``max(1, prob * n_words)`` random pairs of words."""
    words = text.split()
    if len(words) <= 1:
        return text
    for _ in range(max(1, int(prob * len(words)))):
        i, j = rng.integers(len(words), size=2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def augment_texts(
    texts: list[str], labels: np.ndarray, cfg: TextAugmentConfig, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """The original examples followed by ``cfg.copies`` augmented copies of each."""
    if not cfg.methods:
        return texts, labels
    methods = {"delete": delete_words, "swap": swap_words}
    out_texts = list(texts)
    out_labels = [labels]
    for copy in range(cfg.copies):
        method = methods[cfg.methods[copy % len(cfg.methods)]]
        out_texts.extend(method(t, cfg.word_prob, rng) for t in texts)
        out_labels.append(labels)
    return out_texts, np.concatenate(out_labels)


def augment_images(images: np.ndarray, cfg: ImageAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Randomly shift (zero fill) and add Gaussian noise to images on the 0..1 scale (N,C,H,W)."""
    out = images
    if cfg.max_shift_px > 0:
        out = np.zeros_like(images)
        height, width = images.shape[-2:]
        shifts = rng.integers(-cfg.max_shift_px, cfg.max_shift_px + 1, size=(len(images), 2))
        for i, (dy, dx) in enumerate(shifts):
            src_y = slice(max(0, -dy), height - max(0, dy))
            dst_y = slice(max(0, dy), height - max(0, -dy))
            src_x = slice(max(0, -dx), width - max(0, dx))
            dst_x = slice(max(0, dx), width - max(0, -dx))
            out[i, :, dst_y, dst_x] = images[i, :, src_y, src_x]
    if cfg.noise_std > 0:
        noise = rng.normal(0.0, cfg.noise_std, size=out.shape).astype(np.float32)
        out = np.clip(out + noise, 0.0, 1.0)
    return out.astype(np.float32, copy=False)
