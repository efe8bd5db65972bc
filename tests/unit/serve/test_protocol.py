from pathlib import Path
from typing import Any

import pytest

from kiln.runtime.preprocessing import InputError
from kiln.serve.models import ServedModel
from kiln.serve.protocol import InferRequest, decode_inputs, encode_outputs, flatten


class FakePredictor:
    def __init__(self, kind: str) -> None:
        prep: dict[str, Any] = {"kind": kind}
        if kind == "image":
            prep["shape"] = [1, 2, 2]
        else:
            prep["max_length"] = 8
        self.manifest = {"preprocessing": prep, "format": "torch"}
        self.labels = ["a", "b"]
        self.task = f"{kind}-classification"


def served(kind: str) -> ServedModel:
    return ServedModel(name="m", version=1, predictor=FakePredictor(kind), source="x")  # type: ignore[arg-type]


def request(name: str, shape: list[int], datatype: str, data: list[Any]) -> InferRequest:
    return InferRequest.model_validate(
        {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
    )


def test_decode_inputs_reads_bytes_tensor_as_texts() -> None:
    assert decode_inputs(served("text"), request("text", [2], "BYTES", ["x", "y"])) == ["x", "y"]


def test_decode_inputs_reshapes_flat_numeric_data_into_images() -> None:
    images = decode_inputs(served("image"), request("pixels", [2, 4], "INT64", list(range(8))))
    assert [img.shape for img in images] == [(1, 2, 2), (1, 2, 2)]
    assert images[1].ravel().tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize(
    ("req", "words"),
    [
        (request("text", [2], "FP32", [1.0, 2.0]), "takes BYTES"),
        (request("text", [1], "BYTES", [3]), "expected a string"),
        (request("text", [1, 2], "BYTES", ["a", "b"]), "[N] or [N, 1]"),
        (request("pixels", [1, 4], "UINT8", [1, 2, 3, 300]), "do not fit UINT8"),
        (request("pixels", [1, -4], "FP32", [1, 2, 3, 4]), "non-negative"),
    ],
)
def test_decode_inputs_names_the_bad_field(req: InferRequest, words: str) -> None:
    kind = "text" if req.inputs[0].name == "text" else "image"
    with pytest.raises(InputError, match=None) as info:
        decode_inputs(served(kind), req)
    assert words in str(info.value)


def test_encode_outputs_builds_label_and_scores_tensors() -> None:
    outputs = [{"label": "b", "scores": {"a": 0.25, "b": 0.75}}]
    label, scores = encode_outputs(served("text"), outputs, None)
    assert (label.datatype, label.shape, label.data) == ("BYTES", [1], ["b"])
    assert (scores.datatype, scores.shape, scores.data) == ("FP32", [1, 2], [0.25, 0.75])


def test_flatten_refuses_absurd_nesting() -> None:
    deep: list[Any] = [1]
    for _ in range(20):
        deep = [deep]
    with pytest.raises(InputError, match="nested deeper"):
        flatten(deep, "inputs[0]")


def test_served_model_checks_text_inputs_by_index(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"inputs\[1\]: expected a string, got int"):
        served("text").check_inputs(["ok", 5])
