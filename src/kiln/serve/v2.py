"""Open Inference Protocol (KServe v2) endpoints, so Triton and KServe clients work unchanged."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kiln.errors import HTTPProblem
from kiln.runtime.preprocessing import InputError
from kiln.serve.handling import classifier_of
from kiln.serve.protocol import (
    InferRequest,
    InferResponse,
    decode_inputs,
    encode_outputs,
    metadata,
    parse_infer_body,
    to_binary,
    wants_binary,
)
from kiln.serve.rest import ERRORS, service_of

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"], responses=ERRORS)


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    """Server name, version and protocol extensions."""
    from kiln.version import __version__

    service_of(request)
    return {"name": "kiln", "version": __version__, "extensions": []}


@router.get("/health/live")
async def live() -> dict[str, Any]:
    """200 while the process serves HTTP."""
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once every model is loaded and warmed up; 503 before that and during shutdown."""
    service = request.app.state.service
    is_ready = service.repository.is_ready and not service.is_shutting_down
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}")
async def model_metadata(name: str, request: Request) -> dict[str, Any]:
    """Metadata of a model's newest version: inputs, outputs, versions."""
    return _metadata(request, name, None)


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(name: str, version: int, request: Request) -> dict[str, Any]:
    """Metadata of one version."""
    return _metadata(request, name, version)


@router.get("/models/{name}/ready")
async def model_ready(name: str, request: Request) -> JSONResponse:
    """200 when the model has a version serving, else 404 / 503."""
    return _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: int, request: Request) -> JSONResponse:
    """200 when that version is serving."""
    return _ready(request, name, version)


INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor data extension (Inference-Header-Content-Length)",
            },
        },
    }
}
INFER_OK: dict[int | str, dict[str, Any]] = {200: {"model": InferResponse}}


@router.post("/models/{name}/infer", openapi_extra=INFER_BODY, responses=INFER_OK)
async def infer(name: str, request: Request) -> Response:
    """Inference with tensors; the router picks the version (canary weights, else newest)."""
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY, responses=INFER_OK
)
async def infer_version(name: str, version: int, request: Request) -> Response:
    """Inference with one pinned version."""
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: int | None) -> Response:
    service = service_of(request)
    try:
        body, blobs = parse_infer_body(
            await request.body(), request.headers.get("inference-header-content-length")
        )
    except InputError as exc:
        raise HTTPProblem(400, str(exc)) from None
    loaded = service.route(name, version, request.headers)
    model = classifier_of(loaded)
    result = await service.predict(
        loaded, lambda: decode_inputs(model, body, blobs), request.headers
    )
    try:
        outputs = encode_outputs(classifier_of(result.loaded), result.outputs, body.outputs)
    except InputError as exc:
        raise HTTPProblem(400, str(exc)) from None
    header: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if body.id is not None:
        header["id"] = body.id
    blobs_out: list[bytes] = []
    tensors = []
    for tensor in outputs:
        entry = tensor.model_dump()
        if wants_binary(body, tensor.name):
            blob = to_binary(tensor)
            blobs_out.append(blob)
            entry.pop("data")
            entry["parameters"] = {"binary_data_size": len(blob)}
        tensors.append(entry)
    header["outputs"] = tensors
    if not blobs_out:
        return JSONResponse(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    return Response(
        head + b"".join(blobs_out),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def add_schemas(openapi: dict[str, Any]) -> None:
    """Put the tensor request schemas (read by hand for the binary extension) into ``openapi``."""
    schema = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["InferRequest"] = schema


def _metadata(request: Request, name: str, version: int | None) -> dict[str, Any]:
    service = service_of(request)
    if version is None:  # the newest version describes the model, whatever the canary says
        version = max(
            service.route(name, None, request.headers).model.version,
            *service.repository.entry(name).versions,
        )
    loaded = service.route(name, version, request.headers)
    return metadata(loaded.model, list(service.repository.entry(name).versions))


def _ready(request: Request, name: str, version: int | None) -> JSONResponse:
    service = service_of(request)
    service.route(name, version, request.headers)
    is_ready = not service.is_shutting_down
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)
