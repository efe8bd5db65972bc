"""Run the real serve app under uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from kiln.registry.access import TokenVerifier
from kiln.serve.app import create_app
from kiln.serve.config import ServeConfig


@dataclass
class Running:
    """A live server: its URL and app (to reach the repository in tests)."""

    url: str
    app: Any

    @property
    def repository(self) -> Any:
        return self.app.state.service.repository

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30, **kw)

    def client_put(self, path: str, body: Any, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.put(self.url + path, json=body, headers=headers, timeout=30)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)


@contextlib.contextmanager
def serving(
    config: ServeConfig, *, verifier: TokenVerifier | None = None, wait_ready: bool = True
) -> Iterator[Running]:
    """Serve ``config`` on 127.0.0.1 with a port the OS picked; stop on exit."""
    app = create_app(config, verifier=verifier)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = Running(url=f"http://127.0.0.1:{port}", app=app)
    try:
        wait_until(lambda: server.started, what="server start")
        if wait_ready:
            wait_until(lambda: running.get("/v2/health/ready").status_code == 200, what="ready")
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until(condition: Any, *, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition`` until true; fail after ``timeout_s`` (a hang guard only)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Gate:
    """Holds a model's batches until ``release`` is set, recording each batch's size and threads."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    batches: list[int] = field(default_factory=list)
    threads: list[int | None] = field(default_factory=list)  # intra-op threads each batch was given


def hold_model(running: Running, name: str, version: int = 1) -> Gate:
    """Make a served version wait on a gate before each batch computes."""
    served = running.repository.route(name, version).model
    original = served.predict_batch
    gate = Gate()

    def held(inputs: list[Any], threads: int | None = None) -> list[Any]:
        gate.batches.append(len(inputs))
        gate.threads.append(threads)
        gate.started.set()
        gate.release.wait(timeout=60)
        return original(inputs, threads)

    served.predict_batch = held
    return gate


class StepGate:
    """Holds a generation engine before each scheduling round until the test lets it run."""

    def __init__(self, running: Running, name: str) -> None:
        self.engine = running.repository.route(name).engine
        self._permits = threading.Semaphore(0)
        self._is_open = threading.Event()
        original = self.engine._iterate

        def gated() -> None:
            if not self._is_open.is_set():
                self._permits.acquire(timeout=60)
            original()

        self.engine._iterate = gated

    def allow(self, rounds: int) -> None:
        for _ in range(rounds):
            self._permits.release()

    def open(self) -> None:
        self._is_open.set()
        self._permits.release()
