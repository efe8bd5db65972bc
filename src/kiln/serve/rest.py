"""The plain REST API: ``/v1/models/{name}:predict`` with raw inputs, and management.

Management endpoints (load, unload, canary) always need a writer (or admin) token. A load takes a package
folder on the server's disk or a registry reference, never a URL.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import HTTPProblem
from kiln.registry.domain import Role
from kiln.serve.handling import InferenceService, load_problem
from kiln.serve.models import ModelLoadError
from kiln.serve.repository import UnknownModelError


class ErrorResponse(BaseModel):
    """Every error: one message saying what is wrong."""

    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad input, naming the field",
        401: "Missing or invalid token",
        403: "Token role too weak, or management without tokens",
        404: "Unknown model or version",
        413: "Body or batch too large",
        503: "Queue full or not ready (see Retry-After)",
        504: "Deadline exceeded",
    }.items()
}


class PredictRequest(BaseModel):
    """Raw inputs: texts for a text model, pixel arrays (flat or shaped) for an image model."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(min_length=1, examples=[["a moving story"]])


class Prediction(BaseModel):
    """One input's label and class probabilities."""

    label: str
    scores: dict[str, float]
    truncated: bool | None = Field(default=None, description="text cut to the model's max length")


class PredictResponse(BaseModel):
    """The version that answered and one prediction per input."""

    model: str
    version: int
    outputs: list[Prediction]


class ModelInfo(BaseModel):
    """A loaded model, its versions and routing."""

    name: str
    versions: list[int]
    canary: dict[int, int]
    sticky_header: str | None


class LoadRequest(BaseModel):
    """A version to load: a package folder on the server or a registry reference."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, examples=["/models/sentiment-v4", "sentiment@4"])
    version: int | None = Field(default=None, ge=0, description="the source's version if empty")


class CanaryRequest(BaseModel):
    """Traffic shares per version (empty: newest takes all) and an optional sticky header."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[int, int] = Field(default_factory=dict, examples=[{3: 90, 4: 10}])
    sticky_header: str | None = None


router = APIRouter(tags=["REST"], responses=ERRORS)


def service_of(request: Request, *, needed: Role = Role.READER) -> InferenceService:
    """The app's service after the request's token is checked for the ``needed`` role."""
    service: InferenceService = request.app.state.service
    service.authorize(request.headers.get("authorization"), needed=needed)
    return service


@router.post(
    "/v1/models/{name}:predict", response_model=PredictResponse, response_model_exclude_none=True
)
async def predict(name: str, body: PredictRequest, request: Request, response: Response) -> dict[str, Any]:
    """Predict with the version the router picks (canary weights, else the newest)."""
    return await _predict(request, response, name, None, body)


@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
)
async def predict_version(
    name: str, version: int, body: PredictRequest, request: Request, response: Response
) -> dict[str, Any]:
    """Predict with one pinned version."""
    return await _predict(request, response, name, version, body)


async def _predict(
    request: Request, response: Response, name: str, version: int | None, body: PredictRequest
) -> dict[str, Any]:
    service = service_of(request)
    loaded = service.route(name, version, request.headers)
    result = await service.predict(loaded, lambda: body.inputs, request.headers)
    response.headers["X-Request-Id"] = result.request_id
    model = result.loaded.model
    return {"model": model.name, "version": model.version, "outputs": result.outputs}


class ModelListing(ModelInfo):
    """A loaded model as OpenAI's model list shows it, with Kiln's versions and routing."""

    id: str
    object: str = "model"
    created: int = Field(description="when its newest version was loaded (Unix seconds)")
    owned_by: str = "kiln"
    task: str


class ModelList(BaseModel):
    """Every loaded model, in OpenAI's list shape (``GET /v1/models`` of the OpenAI API)."""

    object: str = "list"
    data: list[ModelListing]


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    """Every loaded model (classifiers, recommenders, text generators) with its versions and canary."""
    repo = service_of(request).repository
    data = []
    for name in repo.names():
        info = _info(repo, name)
        versions = repo.entry(name).versions
        newest = versions[max(versions)]
        data.append(
            {
                **info,
                "id": name,
                "object": "model",
                "created": int(newest.loaded_at),
                "owned_by": "kiln",
                "task": newest.model.predictor.manifest.get("task") or "classification",
            }
        )
    return {"object": "list", "data": data}


@router.post("/v1/admin/models/{name}:load", response_model=ModelInfo, tags=["management"])
async def load_version(name: str, body: LoadRequest, request: Request) -> dict[str, Any]:
    """Load (or replace) a version: load, warm up, switch atomically; on failure keep the old."""
    repo = service_of(request, needed=Role.WRITER).repository
    try:
        await repo.load_version(name, body.version, body.source)
    except ModelLoadError as exc:
        raise load_problem(exc) from None
    return _info(repo, name)


@router.delete(
    "/v1/admin/models/{name}/versions/{version}", response_model=ModelInfo, tags=["management"]
)
async def unload_version(name: str, version: int, request: Request) -> dict[str, Any]:
    """Stop routing to a version, finish its queued requests and free it."""
    repo = service_of(request, needed=Role.WRITER).repository
    try:
        await repo.unload_version(name, version)
    except UnknownModelError as exc:
        raise HTTPProblem(404, str(exc)) from None
    return _info(repo, name)


@router.put("/v1/admin/models/{name}/canary", response_model=ModelInfo, tags=["management"])
async def set_canary(name: str, body: CanaryRequest, request: Request) -> dict[str, Any]:
    """Split traffic between loaded versions, optionally sticky by a request header."""
    repo = service_of(request, needed=Role.WRITER).repository
    if body.weights and (min(body.weights.values()) < 0 or sum(body.weights.values()) <= 0):
        raise HTTPProblem(
            400, f"weights: expected non-negative shares with a positive sum, got {body.weights}"
        )
    try:
        repo.set_routing(name, body.weights, body.sticky_header)
    except UnknownModelError as exc:
        raise HTTPProblem(404, str(exc)) from None
    return _info(repo, name)


def _info(repo: Any, name: str) -> dict[str, Any]:
    try:
        entry = repo.entry(name)
    except UnknownModelError as exc:
        raise HTTPProblem(404, str(exc)) from None
    return {
        "name": entry.name,
        "versions": sorted(entry.versions),
        "canary": dict(entry.router.weights),
        "sticky_header": entry.router.sticky_header,
    }
