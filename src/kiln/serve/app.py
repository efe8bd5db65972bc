"""The ASGI app: routes, error bodies, body-size limit, lifespan that loads and drains models.

Models load in the background once the server listens, so liveness answers at once and
readiness turns true only when every model is loaded and warmed up. At shutdown (SIGTERM, after
uvicorn stops accepting and finishes in-flight requests) every batcher drains and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.errors import HTTPProblem
from kiln.registry.access import (
    TokenGate,
    TokenVerifier,
    any_verifier,
    is_loopback,
    registry_verifier,
    service_verifier,
)
from kiln.serve.config import ServeConfig
from kiln.serve.handling import InferenceService
from kiln.serve.metrics import ServeMetrics
from kiln.serve.repository import ModelRepository

logger = logging.getLogger(__name__)

# Answered without a token on any bind: load balancers and orchestrators probe them.
HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")


def create_app(config: ServeConfig, *, verifier: TokenVerifier | None = None) -> FastAPI:
    """Build the server's ASGI app for ``config``.

    Args:
        config: models and server settings.
        verifier: checks bearer tokens; built from ``config.token_file`` and, with
            ``config.registry_tokens``, the registry's API tokens when empty.

    Raises:
        ConfigError: a non-loopback bind without tokens, or an unreadable token file.
    """
    from kiln.serve import apps, recommend, rest, v2
    from kiln.serve.generation import openai
    from kiln.version import __version__

    registry = None
    if config.registry_api or config.registry_tokens:
        from kiln.registry import Registry

        registry = Registry()
    is_public = not is_loopback(config.host)
    if verifier is None:
        try:
            verifier = service_verifier(
                token_file=config.token_file,
                registry_store=registry.store if registry and config.registry_tokens else None,
                service="kiln serve",
                host=config.host,
            )
        except Exception:
            if registry is not None:
                registry.close()
            raise
    metrics = ServeMetrics()
    repository = ModelRepository(config, metrics)
    service = InferenceService(
        config=config,
        repository=repository,
        metrics=metrics,
        verifier=verifier,
        is_auth_required=is_public,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(_load(repository))
        app.state.loading = loading
        try:
            yield
        finally:
            service.is_shutting_down = True
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            await repository.stop()
            if registry is not None:
                registry.close()

    app = FastAPI(
        title="Kiln model server",
        version=__version__,
        summary="REST and Open Inference Protocol (v2) inference with dynamic batching.",
        lifespan=lifespan,
        # JSON bodies are read whatever the Content-Type says: curl and many clients omit it.
        strict_content_type=False,
    )
    app.state.service = service
    app.include_router(rest.router)
    app.include_router(recommend.router)
    app.include_router(apps.router)
    app.include_router(v2.router)
    app.include_router(openai.router)
    if registry is not None and config.registry_api:
        from kiln.registry.http import create_router

        opened = registry
        app.include_router(create_router(lambda: opened), prefix="/registry")
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            v2.add_schemas(default_openapi())
        assert app.openapi_schema is not None  # default_openapi() stores the schema it returns
        return app.openapi_schema

    # Replacing app.openapi is FastAPI's documented way to extend the schema; mypy refuses any
    # assignment to a method.
    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        service.authorize(request.headers.get("authorization"))
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(HTTPProblem)
    async def on_problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        if request.url.path in openai.PATHS:
            return openai.problem_response(exc)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _http_error_response(exc)
        if request.url.path in openai.PATHS:
            message = json.loads(bytes(response.body))["error"]
            return openai.problem_response(HTTPProblem(exc.status_code, message, exc.headers))
        return response

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path in openai.PATHS:
            return openai.validation_response(exc)
        return _validation_response(exc)

    from kiln.monitor.service import attach_monitoring

    attach_monitoring(app, config.monitor)
    # The mounted registry streams package archives under its own, larger limits.
    unlimited = ("/registry/",) if registry is not None and config.registry_api else ()
    app.add_middleware(BodyLimit, max_body_bytes=config.max_body_bytes, exempt_prefixes=unlimited)
    app.add_middleware(EarlyShed, service=service)
    if is_public:
        assert verifier is not None  # service_verifier refused a public bind without tokens
        gate_verifier = verifier
        if registry is not None and config.registry_api and not config.registry_tokens:
            # The mounted registry API takes the registry's tokens (and checks their roles itself)
            # even where the server's own routes take only the token file's.
            gate_verifier = any_verifier([verifier, registry_verifier(registry.store)]) or verifier
        # Outermost, so that a request without a token is refused before its body is read.
        app.add_middleware(TokenGate, verifier=gate_verifier, open_paths=HEALTH_PATHS)
    return app


async def _load(repository: ModelRepository) -> None:
    try:
        await repository.start()
    except Exception:
        logger.exception("loading models failed; the server stays not ready")
        raise


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    messages = []
    status = 422
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            status = 400
            messages.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
        else:
            messages.append(f"{field}: {err['msg']}")
    return JSONResponse({"error": "; ".join(messages)}, status_code=status)


def _http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own errors (a body it cannot decode, an unknown path or method) get the same
    # ``{"error": ...}`` body as every other error.
    message = str(exc.detail)
    if exc.status_code == 400 and "parsing the body" in message:
        message = "body: not valid JSON (it could not be decoded)"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


_PREDICT_PATH = re.compile(
    r"^/(?:v1/models/(?P<rest>[^/:]+)(?:/versions/(?P<rest_version>\d+))?:predict"
    r"|v2/models/(?P<v2>[^/]+)(?:/versions/(?P<v2_version>\d+))?/infer)$"
)


class EarlyShed:
    """Refuse a predict request with 503 before its body is read when its model's queue is full."""

    def __init__(self, app: ASGIApp, *, service: InferenceService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _PREDICT_PATH.match(scope["path"])
            if match is not None:
                version = match["rest_version"] or match["v2_version"]
                authorization = dict(scope["headers"]).get(b"authorization")
                problem = self.service.shed_early(
                    match["rest"] or match["v2"],
                    int(version) if version else None,
                    authorization.decode("latin-1") if authorization else None,
                )
                if problem is not None:
                    response = JSONResponse({"error": problem.message}, 503, headers=problem.headers)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_body_bytes`` with 413 before the app reads them.

    Paths under ``exempt_prefixes`` pass untouched (they bound their own bodies). Every body
    this API takes is JSON, so a body sent as a form (``curl -d`` does that) is read
    as JSON too, instead of failing on its Content-Type.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded"):
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        is_replayed = False

        async def replay() -> Message:
            nonlocal is_replayed
            if not is_replayed:
                is_replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"error": f"request body larger than the limit of {self.max_body_bytes} bytes"},
            status_code=413,
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(k, v) for k, v in response.raw_headers] + [(b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


def app_from_environment() -> Any:
    """App factory for ``--workers N``: each worker reads the config from the environment."""
    import os

    config = ServeConfig.model_validate_json(os.environ["KILN_SERVE_CONFIG"])
    return create_app(config)
