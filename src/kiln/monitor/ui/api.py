"""``/ui``: the dashboard page, its static files and the JSON endpoints it polls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from kiln.monitor.ui.data import DashboardData

STATIC = Path(__file__).parent / "static"


def _data(request: Request) -> DashboardData:
    state = request.app.state
    service = getattr(state, "service", None)
    if service is not None:
        service.authorize(request.headers.get("authorization"), is_management=False)
    return DashboardData(
        service=service, monitor=getattr(state, "monitor", None), log_dir=getattr(state, "log_dir", None)
    )


router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/api/{panel}")
def panel(panel: str, request: Request) -> Any:
    from kiln.serve.handling import HTTPProblem

    data = _data(request)
    readers = {
        "overview": data.overview,
        "lineage": data.lineage,
        "runs": data.runs,
        "compression": data.compression,
        "traffic": data.traffic,
        "drift": data.drift,
        "alerts": data.alerts,
    }
    if panel not in readers:
        raise HTTPProblem(404, f"unknown panel {panel!r}")
    return readers[panel]()


def mount(app: FastAPI) -> None:
    """Add the dashboard to an app."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")


def create_ui_app(*, log_dir: Path | None) -> FastAPI:
    """The dashboard alone (``kiln ui``): registry under KILN_HOME plus a monitoring folder."""
    from fastapi.responses import JSONResponse

    from kiln.serve.handling import HTTPProblem

    app = FastAPI(title="Kiln dashboard")
    app.state.log_dir = log_dir
    mount(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.exception_handler(HTTPProblem)
    async def on_problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    return app
