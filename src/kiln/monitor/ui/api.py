"""``/ui``: the dashboard page, its static files and the JSON endpoints it polls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from kiln.monitor.ui.data import DashboardData
from kiln.registry.access import TokenGate, TokenVerifier, require_tokens

STATIC = Path(__file__).parent / "static"


def _data(request: Request) -> DashboardData:
    # No token check here: on a non-loopback bind TokenGate guards every /ui path (and takes the
    # browser's cookie), on loopback the dashboard is open as before.
    state = request.app.state
    service = getattr(state, "service", None)
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
    from kiln.errors import HTTPProblem

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


def create_ui_app(
    *, log_dir: Path | None, host: str = "127.0.0.1", verifier: TokenVerifier | None = None
) -> FastAPI:
    """The dashboard alone (``kiln ui``): registry under KILN_HOME plus a monitoring folder.

    Args:
        log_dir: the monitoring folder shown, or None.
        host: the interface it will bind; anything but loopback needs ``verifier``.
        verifier: checks bearer tokens; with it every path but ``/health`` needs one.

    Raises:
        ConfigError: a non-loopback ``host`` without a verifier.
    """
    from fastapi.responses import JSONResponse

    from kiln.errors import HTTPProblem

    require_tokens(
        host,
        service="kiln ui",
        has_tokens=verifier is not None,
        options="--registry-tokens (or --token-file FILE)",
    )
    app = FastAPI(title="Kiln dashboard")
    app.state.log_dir = log_dir
    mount(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, bool]:
        return {"live": True}

    @app.exception_handler(HTTPProblem)
    async def on_problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    if verifier is not None:
        app.add_middleware(TokenGate, verifier=verifier, open_paths=("/health",))
    return app
