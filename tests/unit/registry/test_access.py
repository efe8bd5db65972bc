"""Tokens and roles shared by every Kiln HTTP service."""

from pathlib import Path

import pytest

from kiln.registry import Registry
from kiln.registry.access import Principal, bearer_token, is_loopback, read_tokens, registry_verifier, token_verifier
from kiln.registry.domain import Role


def test_role_order_puts_feedback_between_reader_and_writer() -> None:
    assert Role.FEEDBACK.allows(Role.READER) and not Role.READER.allows(Role.FEEDBACK)
    assert Role.WRITER.allows(Role.FEEDBACK) and not Role.FEEDBACK.allows(Role.WRITER)
    assert Role.ADMIN.allows(Role.WRITER)


def test_read_tokens_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ops\nalpha\n\n beta \n")
    tokens = read_tokens(path)
    assert tokens == {"alpha", "beta"}
    verify = token_verifier(tokens)
    assert verify("beta") == Principal("token-file", Role.WRITER) and verify("gamma") is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_token_reads_only_bearer_headers(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_registry_verifier_caches_answers_until_they_expire() -> None:
    now = [0.0]
    with Registry() as registry:  # SQLite under this test's KILN_HOME
        registry.store.create_user("ana", Role.FEEDBACK)
        token, secret = registry.store.create_token("ana")
        verify = registry_verifier(registry.store, cache_s=5.0, clock=lambda: now[0])
        assert verify(secret) == Principal("ana", Role.FEEDBACK)
        registry.store.revoke_token(token.id)
        now[0] = 4.9
        assert verify(secret) == Principal("ana", Role.FEEDBACK), "answered from the cache"
        now[0] = 5.0
        assert verify(secret) is None
        assert verify("kiln_0_unknown") is None


def test_token_gate_closes_a_websocket_without_a_token() -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from kiln.registry.access import TokenGate

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("open")
        await websocket.close()

    app = TokenGate(
        Starlette(routes=[WebSocketRoute("/ws", echo)]), verifier=token_verifier(["t0k"]), open_paths=()
    )
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws"):
        pass
    with client.websocket_connect("/ws", headers={"Authorization": "Bearer t0k"}) as ws:
        assert ws.receive_text() == "open"
