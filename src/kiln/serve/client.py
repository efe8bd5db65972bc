"""``kiln.Client``: call a Kiln server from Python, sync or async, retrying on load shedding.

A 503 with ``Retry-After`` means the server shed the request before doing any work, so it is
safe to send again; the client waits as told (capped) and retries a few times.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from kiln.errors import KilnError


class ServerError(KilnError):
    """The server answered with an error status; ``status`` holds it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Client:
    """A client of one Kiln server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        token: bearer token, when the server asks for one.
        timeout_s: per-request timeout, also sent as the request's deadline.
        max_retries: retries after a 503 before giving up.
        max_retry_wait_s: the longest wait between retries, whatever Retry-After says.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self.headers = {"X-Request-Timeout-Ms": str(int(timeout_s * 1000))}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def predict(
        self, model: str, inputs: list[Any], *, version: int | None = None
    ) -> dict[str, Any]:
        """Predict raw inputs; returns ``{"model", "version", "outputs"}``.

        Raises:
            ServerError: an error status (after retries for 503).
        """
        with httpx.Client(timeout=self.timeout_s, headers=self.headers) as http:
            for attempt in range(self.max_retries + 1):
                resp = http.post(self._path(model, version), json={"inputs": inputs})
                wait_s = self._retry_wait(resp, attempt)
                if wait_s is None:
                    return self._result(resp)
                time.sleep(wait_s)
        raise AssertionError("unreachable")

    async def apredict(
        self, model: str, inputs: list[Any], *, version: int | None = None
    ) -> dict[str, Any]:
        """``predict`` for asyncio code."""
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as http:
            for attempt in range(self.max_retries + 1):
                resp = await http.post(self._path(model, version), json={"inputs": inputs})
                wait_s = self._retry_wait(resp, attempt)
                if wait_s is None:
                    return self._result(resp)
                await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")

    def _path(self, model: str, version: int | None) -> str:
        if version is None:
            return f"{self.url}/v1/models/{model}:predict"
        return f"{self.url}/v1/models/{model}/versions/{version}:predict"

    def _retry_wait(self, resp: httpx.Response, attempt: int) -> float | None:
        if resp.status_code != 503 or attempt >= self.max_retries:
            return None
        try:
            wait_s = float(resp.headers.get("Retry-After", "1"))
        except ValueError:
            wait_s = 1.0
        return min(max(wait_s, 0.0), self.max_retry_wait_s)

    @staticmethod
    def _result(resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text}
        if resp.status_code != 200:
            raise ServerError(resp.status_code, str(body.get("error", body)))
        return body
