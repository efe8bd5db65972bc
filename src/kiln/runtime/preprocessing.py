"""Turn raw inputs (text, pixel arrays) into model features, the same way everywhere.

Training, evaluation, serving and monitoring all use these classes, so a model never sees
features prepared differently from how it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.runtime.package import packaged_file


class InputError(KilnError):
    """Raw inputs that do not match the package's input schema."""


class TextPreprocessor:
    """Tokenize raw strings with a HF ``tokenizers`` file; pads to the longest in the batch."""

    def __init__(self, tokenizer_file: str | Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # The tokenizer's own padding token when it names one (MPNet's is <pad>, id 1), else
        # BERT's [PAD]; batches are padded here, to the longest text, not by the tokenizer.
        padding = self.tokenizer.padding
        self.pad_id = int(padding["pad_id"]) if padding else (self.tokenizer.token_to_id("[PAD]") or 0)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (truncated, unpadded)."""
        _check_texts(texts)
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Pad token id lists into ``input_ids`` and ``attention_mask`` arrays."""
        longest = max((len(x) for x in ids), default=1)
        input_ids = np.full((len(ids), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def __call__(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        return self.collate(self.encode(texts))


# Largest encoded image accepted, in pixels (guards against decompression bombs).
MAX_IMAGE_PIXELS = 4096 * 4096
# How far an encoded image's width/height ratio may be from the model's before it is refused
# rather than stretched.
ASPECT_TOLERANCE = 0.1


class ImagePreprocessor:
    """Scale raw pixel arrays to 0..1 and normalise them into ``pixel_values`` (N, C, H, W).

    An image may also be an encoded file (PNG, JPEG...) as bytes or base64 text (a ``data:``
    URL prefix is allowed): it is converted to the model's channels (grayscale or RGB), resized
    to its height and width, and put on the same raw scale (0..``max_value``) as arrays.
    """

    def __init__(self, *, shape: Sequence[int], max_value: float, mean: float, std: float) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.max_value = float(max_value)
        self.mean = float(mean)
        self.std = float(std)

    def to_unit(self, images: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Raw images (nested lists or arrays, flat or shaped) as float32 in 0..1, shape (N,C,H,W)."""
        if isinstance(images, (str, bytes)) or len(images) == 0:
            raise InputError("expected a non-empty list of images")
        size = int(np.prod(self.shape))
        out = np.empty((len(images), *self.shape), dtype=np.float32)
        for i, image in enumerate(images):
            if isinstance(image, (str, bytes)):
                out[i] = self.decode(image, where=f"image {i}") / self.max_value
                continue
            try:
                arr = np.asarray(image, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InputError(f"image {i}: not a numeric array ({exc})") from None
            if arr.size != size:
                raise InputError(f"image {i}: expected {size} pixels (shape {list(self.shape)}), got {arr.size}")
            out[i] = arr.reshape(self.shape) / self.max_value
        return out

    def decode(self, data: str | bytes, *, where: str = "image") -> np.ndarray:
        """An encoded image (bytes, or base64 text) as a raw float32 array of the model's shape.

        Raises:
            InputError: not an image, too many pixels, or an aspect ratio unlike the model's.
        """
        import base64
        import binascii
        import io

        from PIL import Image, UnidentifiedImageError

        if isinstance(data, str):
            text = data.split(",", 1)[1] if data.startswith("data:") else data
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{where}: a string image must be base64-encoded PNG or JPEG bytes") from None
        channels, height, width = self.shape if len(self.shape) == 3 else (1, *self.shape[-2:])
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{where}: {img.width}x{img.height} pixels is more than {MAX_IMAGE_PIXELS}")
                ratio, expected = img.width / img.height, width / height
                if abs(ratio - expected) > ASPECT_TOLERANCE * expected:
                    raise InputError(
                        f"{where}: image is {img.width}x{img.height} pixels (width x height); the model takes "
                        f"{width}x{height}, so the aspect ratio must be within {ASPECT_TOLERANCE:.0%} of "
                        f"{expected:.2f}; crop or pad it first"
                    )
                resized = img.convert("L" if channels == 1 else "RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                pixels = np.asarray(resized, dtype=np.float32)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            raise InputError(f"{where}: bytes are not an image file Pillow can read (PNG, JPEG...)") from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        # 8-bit pixels (0..255) onto the package's raw scale (e.g. 0..16 for scikit-learn digits).
        return (pixels * (self.max_value / 255.0)).reshape(self.shape)

    def normalize(self, unit: np.ndarray) -> dict[str, np.ndarray]:
        """Features from images already on the 0..1 scale."""
        return {"pixel_values": ((unit - self.mean) / self.std).astype(np.float32)}

    def __call__(self, images: Sequence[Any] | np.ndarray) -> dict[str, np.ndarray]:
        return self.normalize(self.to_unit(images))


def make_preprocessor(folder: Path, manifest: dict[str, Any]) -> TextPreprocessor | ImagePreprocessor:
    """The preprocessor a package's manifest describes."""
    prep = manifest["preprocessing"]
    if prep["kind"] == "text":
        return TextPreprocessor(packaged_file(folder, manifest, prep["tokenizer_file"]), int(prep["max_length"]))
    if prep["kind"] == "image":
        return ImagePreprocessor(shape=prep["shape"], max_value=prep["max_value"], mean=prep["mean"], std=prep["std"])
    raise InputError(f"unknown preprocessing kind {prep['kind']!r}")


def _check_texts(texts: Sequence[Any]) -> None:
    if isinstance(texts, (str, bytes)):
        raise InputError("expected a list of strings, got a single string")
    if len(texts) == 0:
        raise InputError("expected a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"input {i}: expected a string, got {type(text).__name__}")
