"""The Open Inference Protocol (KServe v2) over HTTP/JSON: tensors in, tensors out.

A text model takes one ``BYTES`` input named ``text`` of shape ``[N]`` (or ``[N, 1]``); an image
model takes one input named ``pixels``: numeric of shape ``[N, *image_shape]`` (or ``[N, C*H*W]``),
or ``BYTES`` of shape ``[N]`` holding encoded images (PNG, JPEG; base64 in JSON).
Both answer ``label`` (``BYTES``, ``[N]``) and ``scores`` (``FP32``, ``[N, labels]``). Tensor
data may be flat in row-major order or nested; its element count must match the shape.

The binary tensor data extension (what Triton's clients send by default) is supported both ways:
a request body of ``Inference-Header-Content-Length`` bytes of JSON followed by each input's
``binary_data_size`` bytes (BYTES elements as 4-byte little-endian length + bytes, numbers
little-endian), and binary outputs when the request asks for them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kiln.runtime.preprocessing import InputError
from kiln.serve.models import ServedGenerator, ServedModel

NUMERIC_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
DATATYPES = (*NUMERIC_DTYPES, "BYTES")


class TensorIn(BaseModel):
    """An input tensor of an inference request."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    """An output the client asks for; all outputs when the request lists none."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer`` body."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorIn] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class TensorOut(BaseModel):
    """An output tensor of an inference response."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    """``POST /v2/models/{name}/infer`` answer."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[TensorOut]


def input_name(model: ServedModel) -> str:
    """The name of the model's one input tensor."""
    return "text" if model.kind == "text" else "pixels"


def metadata(model: ServedModel | ServedGenerator, versions: list[int]) -> dict[str, Any]:
    """Model metadata per the protocol: name, versions, platform, input and output tensors.

    A text-generation model has no tensors here: it answers the OpenAI-compatible endpoints.
    """
    if isinstance(model, ServedGenerator):
        return {
            "name": model.name,
            "versions": [str(v) for v in sorted(versions)],
            "platform": f"kiln_{model.predictor.manifest.get('format', 'torch')}",
            "inputs": [],
            "outputs": [],
            "parameters": {"task": model.predictor.task, "endpoints": ["/v1/chat/completions", "/v1/completions"]},
        }
    if model.kind == "text":
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    else:
        inputs = [{"name": "pixels", "datatype": "FP32", "shape": [-1, *model.image_shape]}]
    return {
        "name": model.name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": f"kiln_{model.predictor.manifest.get('format', 'torch')}",
        "inputs": inputs,
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(model.labels)]},
        ],
        "parameters": {"labels": list(model.labels), "task": model.predictor.task},
    }


def decode_inputs(
    model: ServedModel, request: InferRequest, blobs: list[bytes | None] | None = None
) -> list[Any]:
    """The raw inputs (texts or images) that a request's tensors carry.

    Raises:
        InputError: wrong tensor name, datatype, shape or data, naming the field.
    """
    expected = input_name(model)
    if len(request.inputs) != 1:
        raise InputError(
            f"inputs: model {model.name} takes exactly one input tensor "
            f"({expected!r}), got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    where = f"inputs[0] ({tensor.name!r})"
    blob = blobs[0] if blobs else None
    if tensor.name != expected:
        raise InputError(f"inputs[0].name: expected {expected!r}, got {tensor.name!r}")
    if tensor.datatype not in DATATYPES:
        raise InputError(
            f"{where}.datatype: unknown datatype {tensor.datatype!r}; "
            f"allowed: {', '.join(DATATYPES)}"
        )
    if not tensor.shape or any(d < 0 for d in tensor.shape):
        raise InputError(f"{where}.shape: expected non-negative dimensions, got {tensor.shape}")
    if tensor.shape[0] == 0:
        raise InputError(f"{where}.shape: the batch dimension must be at least 1")
    count = math.prod(tensor.shape)
    if blob is not None:
        flat = _from_binary(blob, tensor.datatype, where)
    elif tensor.data is None:
        raise InputError(f"{where}.data: missing (and no binary_data_size parameter)")
    else:
        flat = flatten(tensor.data, where)
    if len(flat) != count:
        raise InputError(
            f"{where}.data: shape {tensor.shape} needs {count} elements, got {len(flat)}"
        )
    n = tensor.shape[0]
    if model.kind == "text":
        if tensor.datatype != "BYTES":
            raise InputError(f"{where}.datatype: a text model takes BYTES, got {tensor.datatype}")
        if count != n:
            raise InputError(f"{where}.shape: expected [N] or [N, 1] for texts, got {tensor.shape}")
        texts = [_text(x, f"{where}.data[{i}]") for i, x in enumerate(flat)]
        return texts
    if tensor.datatype == "BYTES":
        # Encoded images (PNG, JPEG), one per element: raw bytes in binary data, base64 in JSON.
        if count != n:
            raise InputError(f"{where}.shape: expected [N] or [N, 1] for encoded images, got {tensor.shape}")
        for i, x in enumerate(flat):
            if not isinstance(x, (str, bytes)):
                raise InputError(f"{where}.data[{i}]: expected base64 image bytes, got {type(x).__name__}")
        return list(flat)
    per_image = math.prod(model.image_shape)
    if count != n * per_image:
        raise InputError(
            f"{where}.shape: expected [N, {', '.join(map(str, model.image_shape))}] "
            f"({per_image} values per image), got {tensor.shape}"
        )
    kinds: tuple[type, ...] = (
        (bool,)
        if tensor.datatype == "BOOL"
        else (int, float)
        if tensor.datatype.startswith("FP")
        else (int,)
    )
    for i, x in enumerate(flat):
        if isinstance(x, bool) != (tensor.datatype == "BOOL") or not isinstance(x, kinds):
            raise InputError(f"{where}.data[{i}]: expected a {tensor.datatype} value, got {x!r}")
    try:
        arr = np.asarray(flat, dtype=NUMERIC_DTYPES[tensor.datatype])
    except (OverflowError, ValueError) as exc:
        raise InputError(f"{where}.data: values do not fit {tensor.datatype}: {exc}") from None
    return list(arr.astype(np.float32).reshape(n, *model.image_shape))


def encode_outputs(
    model: ServedModel, outputs: list[dict[str, Any]], requested: list[RequestedOutput] | None
) -> list[TensorOut]:
    """The ``label`` and ``scores`` tensors (or those requested) of a batch of predictions.

    Raises:
        InputError: a requested output the model does not have.
    """
    n = len(outputs)
    tensors = {
        "label": TensorOut(
            name="label", shape=[n], datatype="BYTES", data=[o["label"] for o in outputs]
        ),
        "scores": TensorOut(
            name="scores",
            shape=[n, len(model.labels)],
            datatype="FP32",
            data=[o["scores"][label] for o in outputs for label in model.labels],
        ),
    }
    if not requested:
        return list(tensors.values())
    chosen = []
    for i, out in enumerate(requested):
        if out.name not in tensors:
            raise InputError(
                f"outputs[{i}].name: unknown output {out.name!r}; allowed: label, scores"
            )
        chosen.append(tensors[out.name])
    return chosen


def parse_infer_body(
    raw: bytes, header_length: str | None
) -> tuple[InferRequest, list[bytes | None]]:
    """The JSON request and each input's binary blob (None for JSON data).

    Raises:
        InputError: a bad header length, JSON that does not validate, or blob sizes that do not
            add up to the body.
    """
    from pydantic import ValidationError

    if header_length is None:
        json_part, rest = raw, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(raw):
            raise InputError(
                f"header Inference-Header-Content-Length: {header_length!r} is not "
                f"a length within the {len(raw)}-byte body"
            )
        json_part, rest = raw[: int(header_length)], raw[int(header_length) :]
    try:
        request = InferRequest.model_validate_json(json_part)
    except ValidationError as exc:
        messages = []
        for err in exc.errors()[:5]:
            field = ".".join(str(p) for p in err["loc"]) or "body"
            messages.append(f"{field}: {err['msg']}")
        raise InputError("; ".join(messages)) from None
    blobs: list[bytes | None] = []
    offset = 0
    for i, tensor in enumerate(request.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            blobs.append(None)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(rest):
            raise InputError(
                f"inputs[{i}].parameters.binary_data_size: {size!r} does not fit "
                f"the {len(rest)} bytes of binary data"
            )
        blobs.append(rest[offset : offset + size])
        offset += size
    if offset != len(rest):
        raise InputError(f"body: {len(rest) - offset} bytes of binary data belong to no input")
    return request, blobs


def wants_binary(request: InferRequest, name: str) -> bool:
    """Whether output ``name`` goes back as binary data."""
    for out in request.outputs or []:
        if out.name == name and out.parameters and "binary_data" in out.parameters:
            return bool(out.parameters["binary_data"])
    return bool((request.parameters or {}).get("binary_data_output", False))


def to_binary(tensor: TensorOut) -> bytes:
    """A tensor's data in the binary extension's layout."""
    if tensor.datatype == "BYTES":
        parts = []
        for item in tensor.data:
            encoded = str(item).encode("utf-8")
            parts.append(len(encoded).to_bytes(4, "little") + encoded)
        return b"".join(parts)
    dtype = np.dtype(NUMERIC_DTYPES[tensor.datatype]).newbyteorder("<")
    return np.asarray(tensor.data, dtype=dtype).tobytes()


def _from_binary(blob: bytes, datatype: str, where: str) -> list[Any]:
    if datatype == "BYTES":
        items: list[Any] = []
        offset = 0
        while offset < len(blob):
            if offset + 4 > len(blob):
                raise InputError(f"{where}: truncated BYTES element length")
            size = int.from_bytes(blob[offset : offset + 4], "little")
            if offset + 4 + size > len(blob):
                raise InputError(f"{where}: BYTES element longer than the binary data")
            items.append(blob[offset + 4 : offset + 4 + size])
            offset += 4 + size
        return items
    if datatype not in NUMERIC_DTYPES:
        raise InputError(f"{where}.datatype: unknown datatype {datatype!r}")
    dtype = np.dtype(NUMERIC_DTYPES[datatype]).newbyteorder("<")
    if len(blob) % dtype.itemsize:
        raise InputError(f"{where}: {len(blob)} bytes is not a whole number of {datatype}")
    values = np.frombuffer(blob, dtype=dtype)
    if datatype.startswith("FP"):
        return [float(v) for v in values]
    if datatype == "BOOL":
        return [bool(v) for v in values]
    return [int(v) for v in values]


def flatten(data: list[Any], where: str) -> list[Any]:
    """Row-major elements of nested lists."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    depth = 0
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            depth -= 1
            continue
        if isinstance(item, list):
            depth += 1
            if depth > 8:
                raise InputError(f"{where}.data: nested deeper than 8 levels")
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{where}: BYTES element is not UTF-8 text") from None
    raise InputError(f"{where}: expected a string, got {type(value).__name__}")
