"""Image models over real HTTP: PNG bytes (base64 in REST and v2 JSON, raw in v2 binary) or arrays."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_image_package
from tests.integration.serve_harness import serving

GRID = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    package = make_image_package(tmp_path_factory.mktemp("img") / "digits")
    with serving(ServeConfig(models=[ModelConfig(name="digits", versions={1: str(package)})])) as running:
        yield running


def _array_scores(server: Any) -> dict[str, float]:
    # The same picture as an array on the package's raw scale (0..16).
    resp = server.post("/v1/models/digits:predict", {"inputs": [(GRID * 16.0 / 255.0).tolist()]})
    assert resp.status_code == 200, resp.text
    return resp.json()["outputs"][0]["scores"]


def test_rest_predict_takes_base64_png_like_an_array(server: Any) -> None:
    resp = server.post("/v1/models/digits:predict", {"inputs": [b64(png(GRID))]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["scores"] == pytest.approx(_array_scores(server), abs=1e-5)


def test_rest_predict_resizes_a_larger_png(server: Any) -> None:
    big = np.kron(GRID, np.ones((4, 4), np.uint8))
    resp = server.post("/v1/models/digits:predict", {"inputs": [b64(png(big))]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["label"] in [str(i) for i in range(10)]


def test_v2_json_bytes_tensor_takes_base64_png(server: Any) -> None:
    body = {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": [b64(png(GRID))]}]}
    resp = server.post("/v2/models/digits/infer", body)
    assert resp.status_code == 200, resp.text
    scores = next(o for o in resp.json()["outputs"] if o["name"] == "scores")["data"]
    expected = _array_scores(server)
    assert scores == pytest.approx([expected[str(i)] for i in range(10)], abs=1e-5)


def test_v2_binary_bytes_tensor_takes_raw_png(server: Any) -> None:
    raw = png(GRID)
    element = len(raw).to_bytes(4, "little") + raw
    tensor = {"name": "pixels", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}
    header = json.dumps({"inputs": [tensor]}).encode()
    resp = httpx.post(
        server.url + "/v2/models/digits/infer",
        content=header + element,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    label = next(o for o in resp.json()["outputs"] if o["name"] == "label")
    assert label["shape"] == [1]


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([b64(png(np.zeros((10, 40))))], "inputs[0]: image is 40x10 pixels"),
        ([b64(b"GIF89a broken")], "inputs[0]: bytes are not an image file"),
        (["%%% not base64"], "base64"),
        ([[1.0, 2.0, 3.0]], "expected 64 values"),
    ],
)
def test_rest_predict_refuses_wrong_shape_or_broken_images_with_400(server: Any, inputs: list, words: str) -> None:
    resp = server.post("/v1/models/digits:predict", {"inputs": inputs})
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"]


def test_v2_refuses_a_wrong_shape_png_with_400(server: Any) -> None:
    body = {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": [b64(png(np.zeros((10, 40))))]}]}
    resp = server.post("/v2/models/digits/infer", body)
    assert resp.status_code == 400 and "aspect ratio" in resp.json()["error"]

