from pathlib import Path

import numpy as np
import pytest

import kiln.compress
import kiln.runtime
from kiln.compress import Examples
from kiln.errors import PackageError
from kiln.runtime.onnx_engine import OnnxEngine


@pytest.fixture
def image_onnx_package(image_package: Path, tmp_path: Path) -> Path:
    images = [np.full(64, i % 17).tolist() for i in range(8)]
    examples = Examples(
        eval_inputs=images, eval_labels=None, train_inputs=images, train_labels=None
    )
    result = kiln.compress.run(
        image_package, output_dir=tmp_path / "c", steps=["onnx"], examples=examples
    )
    return result.packages[0]


def test_onnx_engine_feeds_only_declared_inputs(image_onnx_package: Path) -> None:
    engine = OnnxEngine(image_onnx_package / "model.onnx", intra_op_threads=1, inter_op_threads=1)
    assert engine.input_names == ["pixel_values"]
    pixels = np.zeros((3, 1, 8, 8), dtype=np.float64)  # cast to the graph's float32
    logits = engine({"pixel_values": pixels, "attention_mask": np.ones((3, 4), dtype=np.int64)})
    assert logits.shape == (3, 10)
    assert logits.dtype == np.float32


def test_onnx_engine_with_threads_is_a_session_with_that_many_intra_op_threads(image_onnx_package: Path) -> None:
    one = OnnxEngine(image_onnx_package / "model.onnx", intra_op_threads=1)
    two = one.with_threads(2)
    assert one.with_threads(1) is one
    assert two.session is not one.session
    assert two.session.get_session_options().intra_op_num_threads == 2
    pixels = {"pixel_values": np.linspace(0, 1, 3 * 64, dtype=np.float32).reshape(3, 1, 8, 8)}
    np.testing.assert_allclose(two(pixels), one(pixels), rtol=1e-5, atol=1e-6)


def test_onnx_engine_names_missing_input(image_onnx_package: Path) -> None:
    engine = OnnxEngine(image_onnx_package / "model.onnx")
    with pytest.raises(PackageError, match="pixel_values"):
        engine({"input_ids": np.zeros((1, 3), dtype=np.int64)})


def test_load_dispatches_onnx_format_to_onnx_runtime(image_onnx_package: Path) -> None:
    predictor = kiln.runtime.load(image_onnx_package, num_threads=1, inter_op_threads=1)
    assert isinstance(predictor.engine, OnnxEngine)
    results = predictor.predict([list(range(64))])
    assert results[0]["label"] in predictor.labels


def test_load_onnx_refuses_missing_model_file(image_onnx_package: Path) -> None:
    (image_onnx_package / "model.onnx").unlink()
    with pytest.raises(PackageError, match="model.onnx"):
        kiln.runtime.load(image_onnx_package, verify=False)
