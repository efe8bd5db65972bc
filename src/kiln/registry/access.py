"""Bearer tokens and roles: one mechanism for every Kiln HTTP service (serve, registry, ui).

A service bound to loopback works as before without tokens (one machine, one user). Bound to any
other interface it needs tokens: ``require_tokens`` refuses to start without them, and
``TokenGate`` then asks every request but the health probes for a valid one. Routes that need
more than reading check the role themselves (``Role.allows``).

Tokens are the registry's API tokens (``kiln registry user add`` / ``kiln registry user
token``), whose users have roles, or the lines of a token file, which act as writer tokens.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.errors import ConfigError
from kiln.registry.domain import Role
from kiln.registry.errors import AuthError

TOKEN_COOKIE = "kiln_token"
HOW_TO_CREATE_A_TOKEN = (
    "create one with `kiln registry user add NAME --role reader` "
    "and `kiln registry user token NAME`"
)


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    name: str  # the registry user, or "token-file"
    role: Role


# token -> who it speaks for, or None for a token that is unknown or revoked.
TokenVerifier = Callable[[str], Principal | None]


def read_tokens(path: str | Path) -> frozenset[str]:
    """Tokens from a file, one per line; blank lines and ``#`` comments are skipped.

    Raises:
        ConfigError: the file is missing or holds no token.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"token file not found: {path}")
    tokens = frozenset(
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    if not tokens:
        raise ConfigError(f"token file {path} holds no token")
    return tokens


def token_verifier(tokens: Iterable[str]) -> TokenVerifier:
    """A verifier of fixed tokens (a token file): each acts as a writer, compared in constant time."""
    known = [t.encode() for t in tokens]
    principal = Principal("token-file", Role.WRITER)

    def verify(candidate: str) -> Principal | None:
        given = candidate.encode()
        return principal if any(hmac.compare_digest(given, t) for t in known) else None

    return verify


def registry_verifier(
    store: Any, *, cache_s: float = 5.0, clock: Callable[[], float] = time.monotonic
) -> TokenVerifier:
    """A verifier backed by the registry's API tokens and the roles of their users.

    Each answer is cached for ``cache_s`` seconds so the database is not asked on every
    request; a revoked token is refused once its cached answer expires.
    """
    cache: dict[str, tuple[float, Principal | None]] = {}
    lock = threading.Lock()

    def verify(candidate: str) -> Principal | None:
        now = clock()
        with lock:
            hit = cache.get(candidate)
        if hit is not None and now - hit[0] < cache_s:
            return hit[1]
        try:
            user = store.authenticate(candidate)
            principal: Principal | None = Principal(user.name, user.role)
        except AuthError:
            principal = None
        with lock:
            if len(cache) > 10_000:  # unknown tokens must not grow the cache without bound
                cache.clear()
            cache[candidate] = (now, principal)
        return principal

    return verify


def any_verifier(verifiers: Iterable[TokenVerifier]) -> TokenVerifier | None:
    """A verifier that accepts what any of ``verifiers`` accepts; None when there are none."""
    chosen = list(verifiers)
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def verify(candidate: str) -> Principal | None:
        for verifier in chosen:
            principal = verifier(candidate)
            if principal is not None:
                return principal
        return None

    return verify


def service_verifier(
    *, token_file: Path | None, registry_store: Any | None, service: str, host: str
) -> TokenVerifier | None:
    """The verifier of a service's tokens: a token file and/or the registry's API tokens.

    Args:
        token_file: a file of tokens, one per line, or None.
        registry_store: the registry store whose API tokens count, or None.
        service: the command, for the error message (``kiln serve``).
        host: the interface it binds.

    Raises:
        ConfigError: an unreadable token file, or a non-loopback bind with no token at all
            (the message says how to create one).
    """
    file_tokens = read_tokens(token_file) if token_file is not None else None
    has_registry_tokens = registry_store is not None and registry_store.has_tokens()
    require_tokens(
        host,
        service=service,
        has_tokens=bool(file_tokens) or has_registry_tokens,
        options="--registry-tokens (or --token-file FILE)",
    )
    return any_verifier(
        [
            *([token_verifier(file_tokens)] if file_tokens else []),
            *([registry_verifier(registry_store)] if registry_store is not None else []),
        ]
    )


def require_tokens(host: str, *, service: str, has_tokens: bool, options: str = "") -> None:
    """Refuse a non-loopback bind that has no token to check.

    Raises:
        ConfigError: ``host`` is not loopback and ``has_tokens`` is false.
    """
    if has_tokens or is_loopback(host):
        return
    then = f", then start with {options}" if options else ", then start again"
    raise ConfigError(
        f"{service} bound to {host} (not loopback) needs bearer tokens and has none: "
        f"{HOW_TO_CREATE_A_TOKEN}{then}; or bind to 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenGate:
    """ASGI middleware: every request but ``open_paths`` needs a token the verifier accepts.

    Browsers cannot send a bearer header when they open a page, so the dashboard under
    ``/ui`` also takes the token once as ``?token=...`` (the way Jupyter does): it is checked,
    set as an HttpOnly, SameSite=Strict cookie limited to ``/ui``, and the browser is sent to the
    same address without it. The cookie is honoured only for GET and HEAD under ``/ui``, so it
    never authorizes a write.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        open_paths: Collection[str],
        error_key: str = "error",
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.open_paths = frozenset(open_paths)
        self.error_key = error_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        is_dashboard_read = scope["path"].startswith("/ui") and scope.get("method", "GET") in ("GET", "HEAD")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token") if is_dashboard_read else None
        if given is not None and self.verifier(given) is not None:
            await self._set_cookie(scope, receive, send, given, [(k, v) for k, v in query if k != "token"])
            return
        token = bearer_token(headers.get("authorization"))
        if token is None and is_dashboard_read:
            token = _cookie(headers.get("cookie"), TOKEN_COOKIE)
        if token is None or self.verifier(token) is None:
            if scope["type"] == "websocket":  # closing before accepting makes the server answer 403
                await send({"type": "websocket.close", "code": 1008})
                return
            response = JSONResponse(
                {self.error_key: "a valid bearer token is required (Authorization: Bearer ...)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _set_cookie(
        self, scope: Scope, receive: Receive, send: Send, token: str, rest: list[tuple[str, str]]
    ) -> None:
        location = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(location, status_code=303)
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=scope.get("scheme") == "https",
        )
        await response(scope, receive, send)


def _cookie(header: str | None, name: str) -> str | None:
    from starlette.requests import cookie_parser

    return cookie_parser(header).get(name) or None if header else None
