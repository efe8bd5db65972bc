"""Open Inference Protocol (KServe v2) endpoints, so Triton and KServe clients work unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kiln.serve.handling import HTTPProblem
from kiln.serve.protocol import InferRequest, InferResponse, decode_inputs, encode_outputs, metadata
from kiln.serve.rest import ERRORS, service_of

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"], responses=ERRORS)


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    """Server name, version and protocol extensions."""
    from kiln import __version__

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


@router.post("/models/{name}/infer", response_model=InferResponse, response_model_exclude_none=True)
async def infer(name: str, body: InferRequest, request: Request) -> dict[str, Any]:
    """Inference with tensors; the router picks the version (canary weights, else newest)."""
    return await _infer(request, name, None, body)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    response_model_exclude_none=True,
)
async def infer_version(
    name: str, version: int, body: InferRequest, request: Request
) -> dict[str, Any]:
    """Inference with one pinned version."""
    return await _infer(request, name, version, body)


async def _infer(
    request: Request, name: str, version: int | None, body: InferRequest
) -> dict[str, Any]:
    service = service_of(request)
    loaded = service.route(name, version, request.headers)
    model = loaded.model
    result = await service.predict(loaded, lambda: decode_inputs(model, body), request.headers)
    try:
        outputs = encode_outputs(result.loaded.model, result.outputs, body.outputs)
    except Exception as exc:
        raise HTTPProblem(400, str(exc)) from None
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "id": body.id,
        "outputs": [o.model_dump() for o in outputs],
    }


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
