"""Encoded images (PNG bytes, base64) become arrays of the package's shape and raw scale."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from kiln.runtime.preprocessing import ImagePreprocessor, InputError


def png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


PREP = ImagePreprocessor(shape=[1, 8, 8], max_value=16.0, mean=0.3, std=0.4)
GRID = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)


def test_decode_png_bytes_puts_pixels_on_the_raw_scale() -> None:
    decoded = PREP.decode(png(GRID))
    assert decoded.shape == (1, 8, 8)
    np.testing.assert_allclose(decoded[0], GRID * 16.0 / 255.0, rtol=1e-6)


def test_decode_accepts_base64_and_data_urls_like_bytes() -> None:
    raw = png(GRID)
    text = base64.b64encode(raw).decode()
    np.testing.assert_array_equal(PREP.decode(text), PREP.decode(raw))
    np.testing.assert_array_equal(PREP.decode("data:image/png;base64," + text), PREP.decode(raw))


def test_decode_converts_rgb_to_grayscale_and_resizes() -> None:
    rgb = np.repeat(np.full((32, 32), 255, np.uint8)[:, :, None], 3, axis=2)
    decoded = PREP.decode(png(rgb, mode="RGB"))
    assert decoded.shape == (1, 8, 8)
    np.testing.assert_allclose(decoded, 16.0)


def test_to_unit_mixes_encoded_images_and_arrays() -> None:
    unit = PREP.to_unit([png(GRID), GRID * 16.0 / 255.0])
    np.testing.assert_allclose(unit[0], unit[1], rtol=1e-6)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (png(np.zeros((10, 40))), "aspect ratio"),
        (b"not an image", "not an image file"),
        ("%%% not base64", "base64"),
    ],
)
def test_decode_refuses_bad_images_with_a_clear_message(data: bytes | str, words: str) -> None:
    with pytest.raises(InputError, match=words):
        PREP.decode(data, where="inputs[0]")
