"""Bearer tokens: who may call inference and who may manage models.

The server binds to loopback by default. Binding anywhere else needs tokens, and then every
endpoint but the health probes asks for one. Management endpoints (load, unload, canary) always
ask for one, so with no token file they are closed: an unauthenticated management API is how
model servers get taken over.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path

from kiln.errors import ConfigError

TokenVerifier = Callable[[str], bool]


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

    def verify(candidate: str) -> bool:
        given = candidate.encode()
        return any(hmac.compare_digest(given, token) for token in known)

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
