"""``POST /v1/models/{name}:recommend``: top-K items for a user id or a cold-start user's features.

A recommendation is one more request through the same path as a prediction: routing (canary,
pinned versions), input checks, deadline, the model's batcher (queries from many requests are
ranked with one matrix product), metrics and observers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import HTTPProblem
from kiln.runtime.recommender import MAX_K, RecommendQuery
from kiln.serve.rest import ERRORS, service_of

router = APIRouter(tags=["REST"], responses=ERRORS)


class RecommendRequest(BaseModel):
    """A known user's id, or raw features of a new user (cold start)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | int | None = Field(default=None, examples=["196"])
    features: dict[str, str | int | float] | None = Field(
        default=None, examples=[{"age": 31, "gender": "F", "occupation": "engineer", "zip_code": "94110"}]
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="how many items to return")
    exclude_seen: bool = Field(default=True, description="leave out items the user interacted with")


class RecommendedItem(BaseModel):
    """One recommended item and its score (higher is better)."""

    item_id: str
    score: float
    title: str | None = None


class RecommendResponse(BaseModel):
    """The version that answered and the ranked items."""

    model: str
    version: int
    user_id: str | None
    cold_start: bool
    items: list[RecommendedItem]


@router.post("/v1/models/{name}:recommend", response_model=RecommendResponse, response_model_exclude_none=True)
async def recommend(name: str, body: RecommendRequest, request: Request) -> dict[str, Any]:
    """Recommend with the version the router picks (canary weights, else the newest)."""
    return await _recommend(request, name, None, body)


@router.post(
    "/v1/models/{name}/versions/{version}:recommend",
    response_model=RecommendResponse,
    response_model_exclude_none=True,
)
async def recommend_version(name: str, version: int, body: RecommendRequest, request: Request) -> dict[str, Any]:
    """Recommend with one pinned version."""
    return await _recommend(request, name, version, body)


async def _recommend(request: Request, name: str, version: int | None, body: RecommendRequest) -> dict[str, Any]:
    service = service_of(request)
    loaded = service.route(name, version, request.headers)
    if loaded.model.kind != "recommendation":
        raise HTTPProblem(400, f"model {name!r} is not a recommendation model; use POST /v1/models/{name}:predict")
    if body.user_id is None and not body.features:
        raise HTTPProblem(400, "body: give user_id, or features for a cold-start user")
    query = RecommendQuery(
        user_id=None if body.user_id is None else str(body.user_id),
        features=body.features or {},
        k=body.k,
        exclude_seen=body.exclude_seen,
    )
    result = await service.predict(loaded, lambda: [query], request.headers)
    model = result.loaded.model
    return {"model": model.name, "version": model.version, **result.outputs[0]}
