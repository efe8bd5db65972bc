"""Triton's own HTTP client talks to Kiln unchanged: binary tensors (its default) and JSON."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_image_package, make_text_package
from tests.integration.serve_harness import serving


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("triton")
    cfg = ServeConfig(
        models=[
            ModelConfig(versions={1: str(make_text_package(root / "sentiment"))}),
            ModelConfig(versions={1: str(make_image_package(root / "digits"))}),
        ]
    )
    with serving(cfg) as srv:
        client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
        yield client
        client.close()


def test_triton_client_checks_health_and_reads_metadata(triton: object) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("sentiment")
    meta = triton.get_model_metadata("digits")
    assert meta["inputs"][0]["name"] == "pixels" and meta["outputs"][1]["shape"] == [-1, 10]


@pytest.mark.parametrize("binary", [True, False])
def test_triton_client_infers_bytes_tensors(triton: object, binary: bool) -> None:
    texts = np.array([b"a moving story", b"dull and long"], dtype=np.object_)
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "scores")]
    result = triton.infer("sentiment", [tensor], outputs=outputs)
    assert result.as_numpy("scores").shape == (2, 2)
    assert set(result.as_numpy("label").tolist()) <= {b"neg", b"pos", "neg", "pos"}


def test_triton_client_infers_fp32_tensors_with_default_binary_outputs(triton: object) -> None:
    pixels = np.random.default_rng(0).uniform(0, 16, size=(3, 1, 8, 8)).astype(np.float32)
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer("digits", [tensor], model_version="1")
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 10) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_triton_client_gets_the_error_message_of_a_bad_tensor(triton: object) -> None:
    tensor = httpclient.InferInput("pixels", [1, 10], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 10), dtype=np.float32))
    with pytest.raises(Exception, match=r"expected \[N, 1, 8, 8\]"):
        triton.infer("digits", [tensor])
