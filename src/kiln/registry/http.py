"""The registry's HTTP API: a FastAPI router that a server can mount, and a standalone app.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations.

Reads need a reader token (or none when ``is_read_open``); writes need a writer token; users
and tokens are an admin's. A missing or unknown token is 401, a too-weak role 403.
"""


import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from kiln.errors import ConfigError, KilnError
from kiln.registry.archives import (
    ArchiveLimits,
    ArchiveTooLargeError,
    iter_package_archive,
    receive_archive,
    unpack_archive,
)
from kiln.registry.client import Registry
from kiln.registry.domain import (
    AliasMove,
    ApiToken,
    LineageEdge,
    Model,
    ModelVersion,
    Role,
    Run,
    User,
)
from kiln.registry.errors import AuthError, ConflictError, NotFoundError
from kiln.registry.search import VersionPage, parse_query


class AliasBody(BaseModel):
    version: int = Field(ge=1, description="Version number the alias should point at")


class RunBody(BaseModel):
    name: str = ""
    recipe: dict[str, Any] = {}
    data_fingerprint: str = ""
    code_version: str = ""
    params: dict[str, Any] = {}


class MetricsBody(BaseModel):
    step: int = Field(ge=0, description="Step the values were measured at")
    metrics: dict[str, float]


class UserBody(BaseModel):
    name: str
    role: Role


class TokenBody(BaseModel):
    name: str = ""


class NewToken(BaseModel):
    token: ApiToken
    secret: str = Field(description="The bearer token; shown only once")


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    try:
        yield
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ArchiveTooLargeError as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except KilnError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def create_router(
    get_registry: Callable[[], Registry],
    *,
    is_read_open: bool = False,
    limits: ArchiveLimits | None = None,
) -> APIRouter:
    """Registry endpoints over the registry ``get_registry`` returns (called per request).

    ``limits`` bounds uploaded package archives (``ArchiveLimits()`` when None).
    """
    limits = limits or ArchiveLimits()
    router = APIRouter(tags=["registry"])
    bearer = HTTPBearer(auto_error=False)

    def needs(role: Role | None) -> Callable[..., User | None]:
        def check(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> User | None:
            if role is None:
                return None
            if credentials is None:
                raise HTTPException(
                    401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
                )
            try:
                user = get_registry().store.authenticate(credentials.credentials)
            except AuthError as exc:
                raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
            if not user.role.allows(role):
                raise HTTPException(
                    403, f"{role.value} role required, {user.name} is {user.role.value}"
                )
            return user

        return check

    reader = Depends(needs(None if is_read_open else Role.READER))
    writer = Depends(needs(Role.WRITER))
    admin = Depends(needs(Role.ADMIN))
    Reg = Annotated[Registry, Depends(get_registry)]

    @router.get("/models", response_model=list[Model], dependencies=[reader])
    def list_models(reg: Reg) -> list[Model]:
        return reg.list_models()

    @router.get("/models/{name}", response_model=Model, dependencies=[reader])
    def get_model(reg: Reg, name: str) -> Model:
        with _http_errors():
            return reg.store.get_model(name)

    @router.get("/models/{name}/versions", response_model=list[ModelVersion], dependencies=[reader])
    def list_versions(reg: Reg, name: str) -> list[ModelVersion]:
        with _http_errors():
            return reg.list_versions(name)

    @router.get("/versions", response_model=VersionPage, dependencies=[reader])
    def search_versions(reg: Reg, request: Request) -> VersionPage:
        """One page of versions: filters, order and cursor as query parameters.

        ``model``, ``tag=KEY=VALUE`` (repeatable), ``metric=NAME>=NUMBER`` (repeatable; also
        ``>``, ``<=``, ``<``, ``=``), ``task``, ``format``, ``created_after``,
        ``created_before`` (ISO 8601), ``alias`` (a name, or ``*`` for any), ``order_by``
        (``version`` or ``metric:NAME``), ``descending``, ``limit`` (1-1000, default 100) and
        ``cursor`` (the previous page's ``next_cursor``). An unknown or bad field is a 400
        naming it.
        """
        params: dict[str, list[str]] = {}
        for key, value in request.query_params.multi_items():
            params.setdefault(key, []).append(value)
        with _http_errors():
            return reg.search(parse_query(params))

    @router.get(
        "/models/{name}/versions/{version}", response_model=ModelVersion, dependencies=[reader]
    )
    def get_version(reg: Reg, name: str, version: int) -> ModelVersion:
        with _http_errors():
            return reg.store.get_version(name, version)

    @router.get(
        "/models/{name}/versions/{version}/lineage",
        response_model=list[LineageEdge],
        dependencies=[reader],
    )
    def get_lineage(reg: Reg, name: str, version: int) -> list[LineageEdge]:
        with _http_errors():
            return list(reg.lineage(f"{name}@{version}").edges)

    @router.get(
        "/models/{name}/versions/{version}/package",
        dependencies=[reader],
        response_class=StreamingResponse,
        responses={200: {"content": {"application/gzip": {}}}},
    )
    def download_package(reg: Reg, name: str, version: int) -> StreamingResponse:
        with _http_errors():
            folder = reg.resolve(f"{name}@{version}")
        return StreamingResponse(iter_package_archive(folder), media_type="application/gzip")

    @router.get(
        "/models/{name}/aliases/{alias}", response_model=ModelVersion, dependencies=[reader]
    )
    def get_alias(reg: Reg, name: str, alias: str) -> ModelVersion:
        with _http_errors():
            return reg.store.get_alias(name, alias)

    @router.get(
        "/models/{name}/aliases/{alias}/history",
        response_model=list[AliasMove],
        dependencies=[reader],
    )
    def alias_history(reg: Reg, name: str, alias: str) -> list[AliasMove]:
        with _http_errors():
            return reg.alias_history(name, alias)

    @router.get("/runs/{run_id}", response_model=Run, dependencies=[reader])
    def get_run(reg: Reg, run_id: str) -> Run:
        with _http_errors():
            return reg.get_run(run_id)

    @router.post(
        "/models/{name}/versions",
        response_model=ModelVersion,
        status_code=201,
        openapi_extra={"requestBody": {"content": {"application/gzip": {}}, "required": True}},
    )
    async def register(
        reg: Reg, request: Request, name: str, user: User = writer, run_id: str | None = None
    ) -> ModelVersion:
        """Register a package sent as a .tar.gz body (413 past the archive limits)."""
        from starlette.concurrency import run_in_threadpool

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise HTTPException(413, f"package archive larger than the limit of {limits.max_upload_bytes} bytes")
        with tempfile.TemporaryDirectory(prefix="kiln-upload-") as tmp, _http_errors():
            archive = Path(tmp) / "package.tar.gz"
            await receive_archive(request.stream(), archive, max_bytes=limits.max_upload_bytes)
            return await run_in_threadpool(
                _register_archive, reg, archive, limits, name=name, run_id=run_id, user=user.name
            )

    @router.put("/models/{name}/aliases/{alias}", response_model=AliasMove)
    def set_alias(
        reg: Reg, name: str, alias: str, body: AliasBody, user: User = writer
    ) -> AliasMove:
        with _http_errors():
            return reg.set_alias(name, alias, body.version, moved_by=user.name)

    @router.delete("/models/{name}/aliases/{alias}", response_model=AliasMove)
    def remove_alias(reg: Reg, name: str, alias: str, user: User = writer) -> AliasMove:
        with _http_errors():
            return reg.remove_alias(name, alias, moved_by=user.name)

    @router.delete(
        "/models/{name}/versions/{version}", response_model=ModelVersion, dependencies=[writer]
    )
    def delete_version(reg: Reg, name: str, version: int) -> ModelVersion:
        with _http_errors():
            return reg.delete(f"{name}@{version}")

    @router.post("/runs", response_model=Run, status_code=201, dependencies=[writer])
    def start_run(reg: Reg, body: RunBody) -> Run:
        return reg.start_run(**body.model_dump())

    @router.post("/runs/{run_id}/metrics", status_code=204, dependencies=[writer])
    def log_metrics(reg: Reg, run_id: str, body: MetricsBody) -> None:
        with _http_errors():
            reg.log_metrics(run_id, body.metrics, step=body.step)

    @router.post("/users", response_model=User, status_code=201, dependencies=[admin])
    def create_user(reg: Reg, body: UserBody) -> User:
        with _http_errors():
            return reg.store.create_user(body.name, body.role)

    @router.post(
        "/users/{name}/tokens", response_model=NewToken, status_code=201, dependencies=[admin]
    )
    def create_token(reg: Reg, name: str, body: TokenBody) -> NewToken:
        with _http_errors():
            token, secret = reg.store.create_token(name, name=body.name)
        return NewToken(token=token, secret=secret)

    return router


def _register_archive(
    reg: Registry, archive: Path, limits: ArchiveLimits, *, name: str, run_id: str | None, user: str
) -> ModelVersion:
    folder = archive.with_name("package")
    unpack_archive(archive, folder, limits)
    archive.unlink()
    return reg.register(folder, name=name, run=run_id, created_by=user)


def create_app(
    registry: Registry,
    *,
    is_read_open: bool = False,
    limits: ArchiveLimits | None = None,
    host: str = "127.0.0.1",
) -> FastAPI:
    """A standalone app serving ``registry`` (``kiln registry serve``).

    Args:
        registry: the registry served.
        is_read_open: reads need no token (loopback binds only).
        limits: upload and unpacking limits; the defaults when empty.
        host: the interface it will bind; beyond loopback every path but ``/health`` needs a
            token and the registry must hold one.

    Raises:
        ConfigError: a non-loopback ``host`` with open reads or without any API token.
    """
    from kiln.registry.access import TokenGate, is_loopback, registry_verifier, require_tokens

    is_public = not is_loopback(host)
    if is_public:
        if is_read_open:
            raise ConfigError(f"--open-reads is allowed only on a loopback bind, not on {host}")
        require_tokens(host, service="kiln registry serve", has_tokens=registry.store.has_tokens())
    app = FastAPI(title="Kiln model registry", version="1")
    app.include_router(create_router(lambda: registry, is_read_open=is_read_open, limits=limits))

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, bool]:
        return {"live": True}

    if is_public:
        app.add_middleware(
            TokenGate, verifier=registry_verifier(registry.store), open_paths=("/health",), error_key="detail"
        )
    return app
