"""One inference request from parsed body to outputs, shared by the REST and v2 protocols.

Routing, input checks, deadline, batching, metrics and prediction observers happen here once;
every failure becomes an ``HTTPProblem`` with the status a client can act on.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import HTTPProblem
from kiln.registry.access import TokenVerifier, bearer_token
from kiln.registry.domain import Role
from kiln.runtime.preprocessing import InputError
from kiln.serve.batching import BatcherStoppedError, DeadlineExceededError, QueueFullError
from kiln.serve.config import ServeConfig
from kiln.serve.metrics import ServeMetrics
from kiln.serve.models import ModelLoadError, ServedGenerator, ServedModel
from kiln.serve.repository import (
    LoadedVersion,
    ModelRepository,
    PredictionRecord,
    UnknownModelError,
)

TIMEOUT_HEADER = "x-request-timeout-ms"
REQUEST_ID_HEADER = "x-request-id"


@dataclass
class Prediction:
    """Outputs of one request and the version that produced them."""

    loaded: LoadedVersion
    outputs: list[dict[str, Any]]
    request_id: str  # echoed as X-Request-Id; feedback refers to it


@dataclass
class InferenceService:
    """The server's state as request handlers see it."""

    config: ServeConfig
    repository: ModelRepository
    metrics: ServeMetrics
    verifier: TokenVerifier | None  # None: no tokens configured
    is_auth_required: bool  # every non-health endpoint asks for a token
    is_shutting_down: bool = field(default=False)

    def authorize(self, authorization: str | None, *, needed: Role = Role.READER) -> None:
        """Check the bearer token where one is needed.

        Reading (inference, metrics, reports) needs a token on a non-loopback bind. Feedback
        needs a feedback (or stronger) token whenever the server has tokens. Management needs
        a writer token and is closed when the server has none.

        Raises:
            HTTPProblem: 401 without a valid token, 403 for a role too weak for the call or
                for management on a server without tokens.
        """
        if self.verifier is None:
            if needed.allows(Role.WRITER):
                raise HTTPProblem(
                    403,
                    "management endpoints are disabled: start the server with "
                    "--token-file or --registry-tokens to enable them",
                )
            return  # a loopback server without tokens (require_tokens refused any other)
        if needed is Role.READER and not self.is_auth_required:
            return
        token = bearer_token(authorization)
        principal = self.verifier(token) if token is not None else None
        if principal is None:
            raise HTTPProblem(
                401,
                "a valid bearer token is required (Authorization: Bearer ...)",
                {"WWW-Authenticate": "Bearer"},
            )
        if not principal.role.allows(needed):
            raise HTTPProblem(
                403, f"{needed.value} role required, {principal.name} is {principal.role.value}"
            )

    def deadline(self, headers: Mapping[str, str]) -> float:
        """The request's deadline on ``time.monotonic()``.

        Raises:
            HTTPProblem: 400 for a timeout header that is not a positive number.
        """
        raw = headers.get(TIMEOUT_HEADER)
        timeout_ms = self.config.request_timeout_ms
        if raw is not None:
            try:
                timeout_ms = float(raw)
            except ValueError:
                timeout_ms = -1.0
            if not (timeout_ms > 0 and math.isfinite(timeout_ms)):
                raise HTTPProblem(
                    400,
                    f"header X-Request-Timeout-Ms: expected a positive number "
                    f"of milliseconds, got {raw!r}",
                )
        return time.monotonic() + timeout_ms / 1000.0

    def route(self, name: str, version: int | None, headers: Mapping[str, str]) -> LoadedVersion:
        """The version that answers, or 404 / 503 (still loading)."""
        try:
            entry = self.repository.entry(name)
            key = (
                headers.get(entry.router.sticky_header.lower())
                if entry.router.sticky_header
                else None
            )
            return self.repository.route(name, version, key)
        except UnknownModelError as exc:
            if not self.repository.is_ready and not self.is_shutting_down:
                raise HTTPProblem(
                    503, f"{exc} (the server is still loading models)", {"Retry-After": "1"}
                ) from None
            self.metrics.requests.labels(name, "" if version is None else str(version), "404").inc()
            raise HTTPProblem(404, str(exc)) from None

    def shed_early(self, name: str, version: int | None, authorization: str | None) -> HTTPProblem | None:
        """A 503 for a predict request whose every candidate version has a full queue, else None.

        Checked before the body is read: under overload, refusing must cost far less than
        answering, or the refusals eat the CPU the model needs. Anything else (unknown model,
        missing token, room in a queue) goes the normal way and gets its normal answer.
        """
        try:
            entry = self.repository.entry(name)
        except UnknownModelError:
            return None
        versions = [entry.versions.get(version)] if version is not None else list(entry.versions.values())
        if not versions or any(v is None or not v.is_full for v in versions):
            return None  # room somewhere (or an unknown version): the normal path answers
        try:
            self.authorize(authorization)
        except HTTPProblem:
            return None
        full = versions[0]
        assert full is not None
        self.metrics.requests.labels(name, str(full.model.version), "503").inc()
        source = full.engine or full.batcher
        assert source is not None  # a version serves through one of them
        return queue_full_problem(source.queue_full_error())

    async def predict(
        self,
        loaded: LoadedVersion,
        decode: Callable[[], list[Any]],
        headers: Mapping[str, str],
    ) -> Prediction:
        """Decode and check inputs, run them through the batcher, record metrics.

        Raises:
            HTTPProblem: 400 bad inputs, 413 too many inputs, 503 queue full or stopping,
                504 deadline exceeded, 500 a failure inside the model.
        """
        model = loaded.model
        labels = (model.name, str(model.version))
        start = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()
        request_id = (headers.get(REQUEST_ID_HEADER) or "")[:128] or uuid.uuid4().hex
        try:
            if loaded.engine is not None:
                model.check_inputs([])  # a generation model refuses, naming its endpoints
            deadline = self.deadline(headers)
            inputs = model.check_inputs(decode())
            if len(inputs) > self.config.max_request_inputs:
                raise HTTPProblem(
                    413,
                    f"inputs: {len(inputs)} inputs in one request; the limit "
                    f"is {self.config.max_request_inputs}",
                )
            result = await loaded.predict(inputs, deadline=deadline)
            self.metrics.queue_time.labels(*labels).observe(result.queue_s)
            status = 200
            latency_s = time.perf_counter() - start
            self.metrics.latency.labels(*labels).observe(latency_s)
            if self.repository.observers:
                self.repository.notify(
                    PredictionRecord(
                        model=model.name,
                        version=model.version,
                        inputs=inputs,
                        outputs=result.outputs,
                        latency_s=latency_s,
                        timestamp=time.time(),
                        request_id=request_id,
                    )
                )
            return Prediction(loaded=loaded, outputs=result.outputs, request_id=request_id)
        except HTTPProblem as exc:
            status = exc.status
            raise
        except InputError as exc:
            status = 400
            raise HTTPProblem(400, str(exc)) from None
        except QueueFullError as exc:
            status = 503
            raise queue_full_problem(exc) from None
        except BatcherStoppedError as exc:
            status = 503
            raise HTTPProblem(503, str(exc), {"Retry-After": "1"}) from None
        except DeadlineExceededError as exc:
            status = 504
            raise HTTPProblem(504, str(exc)) from None
        except Exception as exc:  # a failure inside the model: the client learns what failed
            raise HTTPProblem(
                500, f"model {model.name} version {model.version} failed: {exc}"
            ) from exc
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(*labels, str(status)).inc()


def classifier_of(loaded: LoadedVersion) -> ServedModel:
    """The served classifier (or recommender) of a version.

    Raises:
        HTTPProblem: 400 for a text-generation version, naming its endpoints.
    """
    model = loaded.model
    if isinstance(model, ServedGenerator):
        raise HTTPProblem(
            400,
            f"model {model.name!r} is a text-generation model; use POST /v1/chat/completions "
            "or POST /v1/completions",
        )
    return model


def queue_full_problem(exc: QueueFullError) -> HTTPProblem:
    """A full queue as 503 with the batcher's Retry-After."""
    return HTTPProblem(503, str(exc), {"Retry-After": str(math.ceil(exc.retry_after_s))})


def load_problem(exc: ModelLoadError) -> HTTPProblem:
    """A failed load as a 400 that says the old version keeps serving."""
    return HTTPProblem(400, f"{exc}; the versions already loaded keep serving")
