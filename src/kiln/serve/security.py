"""Bearer tokens: who may call inference and who may manage models.

The server binds to loopback by default. Binding anywhere else needs tokens, and then every
endpoint but the health probes asks for one. Management endpoints (load, unload, canary) always
ask for one, so with no tokens they are closed: an unauthenticated management API is how model
servers get taken over.

Tokens come from a file (every token may do everything) or from the registry
(``registry_verifier``): a reader token may call inference, management needs a writer or admin
token, and a revoked token stops working within the cache's lifetime.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kiln.errors import ConfigError

# (token, is_management) -> whether the token may make that call.
TokenVerifier = Callable[[str, bool], bool]


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
    """A verifier that compares in constant time against every known token."""
    known = [t.encode() for t in tokens]

    def verify(candidate: str, is_management: bool = False) -> bool:
        given = candidate.encode()
        return any(hmac.compare_digest(given, token) for token in known)

    return verify


def registry_verifier(store: Any, *, cache_s: float = 5.0) -> TokenVerifier:
    """A verifier backed by the registry's API tokens and the roles of their users.

    Inference needs a reader token, management a writer (or admin) token. Each answer is
    cached for ``cache_s`` seconds so the database is not asked on every request; a revoked
    token is refused once its cached answer expires.
    """
    from kiln.registry.domain import Role
    from kiln.registry.errors import AuthError

    cache: dict[str, tuple[float, Role | None]] = {}
    lock = threading.Lock()

    def role_of(token: str) -> Role | None:
        now = time.monotonic()
        with lock:
            hit = cache.get(token)
        if hit is not None and now - hit[0] < cache_s:
            return hit[1]
        try:
            role: Role | None = store.authenticate(token).role
        except AuthError:
            role = None
        with lock:
            if len(cache) > 10_000:  # unknown tokens must not grow the cache without bound
                cache.clear()
            cache[token] = (now, role)
        return role

    def verify(candidate: str, is_management: bool = False) -> bool:
        role = role_of(candidate)
        needed = Role.WRITER if is_management else Role.READER
        return role is not None and role.allows(needed)

    return verify


def any_verifier(verifiers: Iterable[TokenVerifier]) -> TokenVerifier | None:
    """A verifier that accepts what any of ``verifiers`` accepts; None when there are none."""
    chosen = list(verifiers)
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def verify(candidate: str, is_management: bool = False) -> bool:
        return any(v(candidate, is_management) for v in chosen)

    return verify


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
