"""Monitoring endpoints of the server: feedback, window reports and alert history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from kiln.registry.domain import Role


class FeedbackRequest(BaseModel):
    """The true label of an answered input, by the request id the server returned."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    label: str = Field(min_length=1)
    index: int = Field(default=0, ge=0, description="position of the input in its request")


router = APIRouter(tags=["monitoring"])


def _monitor(request: Request, needed: Role = Role.READER) -> Any:
    from kiln.errors import HTTPProblem

    service = request.app.state.service
    service.authorize(request.headers.get("authorization"), needed=needed)
    monitor = getattr(request.app.state, "monitor", None)
    if monitor is None:
        raise HTTPProblem(404, "monitoring is off: set monitor.enabled in the serve config")
    return monitor


@router.post("/v1/models/{name}/feedback", status_code=202)
async def feedback(name: str, body: FeedbackRequest, request: Request) -> dict[str, str]:
    """Record the true label of a logged input; turns on accuracy by window.

    Labels drive retraining, so with tokens this needs a feedback (or writer) token: a
    reader token, enough to call the model, must not choose its next version's training data.
    """
    from kiln.errors import HTTPProblem

    monitor = _monitor(request, Role.FEEDBACK)
    entry = (
        request.app.state.service.repository.entry(name)
        if name in request.app.state.service.repository.names()
        else None
    )
    if entry is None:
        raise HTTPProblem(404, f"unknown model {name!r}")
    if body.label not in next(iter(entry.versions.values())).model.labels:
        raise HTTPProblem(400, f"label: {body.label!r} is not one of the model's labels")
    monitor.feedback(name, body.request_id, body.label, body.index)
    return {"status": "accepted"}


@router.get("/v1/monitor/reports")
async def reports(request: Request) -> list[dict[str, Any]]:
    """The latest window report of every model version."""
    monitor = _monitor(request)
    return [r.to_json() for r in monitor.reports.values()]


@router.get("/v1/monitor/alerts")
async def alerts(request: Request, limit: int = 200) -> dict[str, Any]:
    """Active alerts and the alert history, newest first."""
    monitor = _monitor(request)
    return {
        "active": [{"rule": r, "model": m, "version": v} for r, m, v in monitor.alerts.active()],
        "history": [e.to_json() for e in monitor.history.list(limit)],
    }
