"""OpenAI-compatible text generation: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

The bodies and answers follow OpenAI's API reference, so the official ``openai`` client works
unchanged. Every error on these paths is OpenAI's error body,
``{"error": {"message", "type", "param", "code"}}``, with ``param`` naming the field at fault.
A streamed answer (``stream: true``) is Server-Sent Events: one chunk per released text piece (a
token, or a few where a token ends inside a UTF-8 character or inside a possible stop string),
a last chunk with ``finish_reason``, then ``data: [DONE]``. A client that disconnects cancels
its sequence, which leaves the decode batch before the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from kiln.errors import ConfigError, DataError, HTTPProblem, PackageError
from kiln.runtime.generation import Generator, PreparedPrompt
from kiln.runtime.preprocessing import InputError
from kiln.serve.batching import BatcherStoppedError, QueueFullError
from kiln.serve.generation.engine import Finished, GenerationEngine, GenerationFailedError, SequenceHandle
from kiln.serve.generation.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from kiln.serve.handling import REQUEST_ID_HEADER, TIMEOUT_HEADER, InferenceService
from kiln.serve.repository import LoadedVersion

Kind = Literal["chat", "completion"]
PATHS = ("/v1/chat/completions", "/v1/completions")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
}


# Names pydantic gives union branches in an error's location.
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict"})


class OpenAIProblem(HTTPProblem):
    """An error answered in OpenAI's shape: which field (``param``) and a machine code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.param = param
        self.code = code


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def problem_response(exc: HTTPProblem) -> JSONResponse:
    """Any ``HTTPProblem`` raised on these paths, in OpenAI's shape."""
    param = exc.param if isinstance(exc, OpenAIProblem) else None
    code = exc.code if isinstance(exc, OpenAIProblem) else None
    return JSONResponse(
        error_body(exc.status, exc.message, param=param, code=code), status_code=exc.status, headers=exc.headers
    )


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """A body that does not validate: 400 naming the first bad field (as OpenAI answers)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    # A union (str | list) reports each branch under its type's name, which is no field.
    loc = [p for p in loc if (p.isidentifier() or p.isdigit()) and p not in _TYPE_NAMES]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return JSONResponse(error_body(400, "body: not valid JSON", code="invalid_json"), status_code=400)
    if err.get("type") == "extra_forbidden":
        message = f"{param}: unrecognized request argument"
    else:
        message = f"{param or 'body'}: {err['msg']}"
    return JSONResponse(error_body(400, message, param=param, code="invalid_value"), status_code=400)


router = APIRouter(tags=["OpenAI"])


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """Answer a conversation (OpenAI Chat Completions; ``n`` must be 1)."""
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    return await _complete(request, body, messages, kind="chat")


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """Continue a prompt (OpenAI Completions; one prompt, ``n`` must be 1)."""
    return await _complete(request, body, body.prompt_text(), kind="completion")


async def _complete(request: Request, body: SamplingFields, prompt: Any, *, kind: Kind) -> Any:
    service: InferenceService = request.app.state.service
    service.authorize(request.headers.get("authorization"))
    loaded, engine = _route(service, body.model, request.headers)
    model = loaded.model
    labels = (model.name, str(model.version))
    timeout_ms = _timeout_ms(service, request.headers)
    prepared = _prepare(engine.generator, body, prompt, kind=kind)
    deadline = None if timeout_ms is None else engine.clock() + timeout_ms / 1000.0
    try:
        handle = engine.submit(prepared, deadline=deadline)
    except InputError as exc:
        raise _counted(service, labels, OpenAIProblem(400, str(exc), param="max_tokens")) from None
    except QueueFullError as exc:
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        raise _counted(service, labels, OpenAIProblem(503, str(exc), code="overloaded", headers=headers)) from None
    except BatcherStoppedError as exc:
        raise _counted(service, labels, OpenAIProblem(503, str(exc), headers={"Retry-After": "1"})) from None
    answer = _Answer(
        kind=kind,
        model=model.name,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        timeout_ms=timeout_ms,
    )
    request_id = (request.headers.get(REQUEST_ID_HEADER) or "")[:128] or answer.id
    if loaded.recorder is not None and service.repository.observers and loaded.recorder.is_sampled():
        handle.on_end = loaded.recorder.on_end(request_id=request_id, kind=kind, prompt=prompt)
    headers = {"X-Model-Version": str(model.version), "X-Request-Id": request_id}
    if body.stream:
        service.metrics.requests.labels(*labels, "200").inc()
        return StreamingResponse(_events(handle, answer), media_type="text/event-stream", headers=headers)
    service.metrics.in_flight.inc()
    status = 500
    try:
        finished = await unless_disconnected(request, handle)
        if finished.finish_reason == "timeout":
            status = 504
            raise OpenAIProblem(504, answer.timeout_message(finished), code="timeout", headers=headers)
        status = 200
    except GenerationFailedError as exc:
        raise OpenAIProblem(500, str(exc)) from None
    except ClientGoneError:
        status = 499  # nginx's "client closed request": nobody reads the answer
        return Response(status_code=status)
    finally:
        handle.cancel()  # a no-op once finished; frees the slot of a request whose client left
        service.metrics.in_flight.dec()
        service.metrics.requests.labels(*labels, str(status)).inc()
    return JSONResponse(answer.whole(finished), headers=headers)


class ClientGoneError(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, handle: SequenceHandle) -> Finished:
    """The whole answer, or ``ClientGoneError`` as soon as the client disconnects."""
    result = asyncio.ensure_future(handle.result())
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not result.done():
        result.cancel()
        raise ClientGoneError
    return result.result()


async def _disconnect(request: Request) -> None:
    # The body is read already, so the next message the server gives is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _timeout_ms(service: InferenceService, headers: Mapping[str, str]) -> float | None:
    """The request's X-Request-Timeout-Ms, or None without the header (a generation request
    then runs to its end: the server's request_timeout_ms is the classifiers' default).

    Raises:
        OpenAIProblem: 400 for a value that is not a positive number of milliseconds.
    """
    if TIMEOUT_HEADER not in headers:
        return None
    try:
        service.deadline(headers)  # the classifiers' check of the header, and its message
    except HTTPProblem as exc:
        raise OpenAIProblem(exc.status, exc.message, param="X-Request-Timeout-Ms") from None
    return float(headers[TIMEOUT_HEADER])


def _route(service: InferenceService, name: str, headers: Mapping[str, str]) -> tuple[LoadedVersion, GenerationEngine]:
    try:
        loaded = service.route(name, None, headers)
    except HTTPProblem as exc:
        code = "model_not_found" if exc.status == 404 else None
        raise OpenAIProblem(exc.status, exc.message, param="model", code=code, headers=exc.headers) from None
    if loaded.engine is None:
        task = loaded.model.predictor.manifest.get("task") or "classification"
        action = "recommend" if task == "recommendation" else "predict"
        raise OpenAIProblem(
            400,
            f"model {name!r} is a {task} model, not a text-generation model; use POST /v1/models/{name}:{action}",
            param="model",
            code="model_not_supported",
        )
    return loaded, loaded.engine


def _prepare(generator: Generator, body: SamplingFields, prompt: Any, *, kind: Kind) -> PreparedPrompt:
    """The prompt's ids and settings; every refusal names the request field at fault."""
    prompt_field = "messages" if kind == "chat" else "prompt"
    params = body.generation_params()
    limit_field = (
        "max_completion_tokens"
        if getattr(body, "max_completion_tokens", None) and body.max_tokens is None
        else "max_tokens"
    )
    max_new = params.get("max_new_tokens")
    if max_new is not None and max_new >= generator.context_length:
        raise OpenAIProblem(
            400,
            f"{limit_field}: must be < the context length {generator.context_length} of model "
            f"{body.model!r}, got {max_new}",
            param=limit_field,
            code="context_length_exceeded",
        )
    _check_unicode(prompt_field, prompt)
    _check_unicode("stop", params.get("stop", []))
    try:
        return generator.prepare(prompt, **params)
    except InputError as exc:
        code = "context_length_exceeded" if "fit" in str(exc) else "invalid_value"
        raise OpenAIProblem(400, f"{prompt_field}: {exc}", param=prompt_field, code=code) from None
    except PackageError as exc:
        hint = "; send a prompt to POST /v1/completions" if kind == "chat" else ""
        raise OpenAIProblem(400, f"{prompt_field}: {exc}{hint}", param=prompt_field) from None
    except DataError as exc:
        raise OpenAIProblem(400, f"{prompt_field}: {exc}", param=prompt_field) from None
    except ConfigError as exc:
        names = {
            "max_new_tokens": limit_field,
            "stop": "stop",
            "temperature": "temperature",
            "top_p": "top_p",
            "top_k": "top_k",
            "seed": "seed",
        }
        param = next((mine for theirs, mine in names.items() if theirs in str(exc)), None)
        raise OpenAIProblem(400, str(exc), param=param) from None


def _check_unicode(field: str, value: Any) -> None:
    """Refuse text that is not valid Unicode (JSON's lone surrogate escapes decode to such text)."""
    texts = [value] if isinstance(value, str) else [m["content"] if isinstance(m, dict) else m for m in value]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise OpenAIProblem(
                400, f"{field}: text must be valid Unicode ({exc.reason} at character {exc.start})", param=field
            ) from None


def _counted(service: InferenceService, labels: tuple[str, str], problem: OpenAIProblem) -> OpenAIProblem:
    service.metrics.requests.labels(*labels, str(problem.status)).inc()
    return problem


class _Answer:
    """Writes one request's answer: whole, or as stream chunks."""

    def __init__(self, *, kind: Kind, model: str, include_usage: bool, timeout_ms: float | None = None) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        self.timeout_ms = timeout_ms
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def whole(self, finished: Finished) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": finished.text}}
        else:
            choice = {"index": 0, "text": finished.text}
        choice.update(finish_reason=finished.finish_reason, logprobs=None)
        return {**self._head(stream=False), "choices": [choice], "usage": _usage(finished)}

    def chunk(self, text: str | None, *, finish_reason: str | None = None, is_first: bool = False) -> str:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if is_first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice.update(finish_reason=finish_reason, logprobs=None)
        return sse_event({**self._head(stream=True), "choices": [choice]})

    def timeout_message(self, finished: Finished) -> str:
        return (
            f"the request passed its deadline of {self.timeout_ms:g} ms (X-Request-Timeout-Ms) after "
            f"{finished.completion_tokens} generated tokens; it was stopped"
        )

    def usage_chunk(self, finished: Finished) -> str:
        return sse_event({**self._head(stream=True), "choices": [], "usage": _usage(finished)})

    def _head(self, *, stream: bool) -> dict[str, Any]:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj + (".chunk" if stream and self.kind == "chat" else ""),
            "created": self.created,
            "model": self.model,
        }


async def _events(handle: SequenceHandle, answer: _Answer) -> AsyncIterator[str]:
    """The SSE stream of one sequence; the sequence is cancelled if the stream stops early."""
    try:
        if answer.kind == "chat":
            yield answer.chunk(None, is_first=True)
        async for event in handle.pieces():
            if isinstance(event, Finished) and event.finish_reason == "timeout":
                # OpenAI's clients raise on an event carrying "error" (openai-python: APIError).
                yield sse_event(error_body(504, answer.timeout_message(event), code="timeout"))
            elif isinstance(event, Finished):
                yield answer.chunk(None if answer.kind == "chat" else "", finish_reason=event.finish_reason)
                if answer.include_usage:
                    yield answer.usage_chunk(event)
            else:
                yield answer.chunk(event.text)
    except GenerationFailedError as exc:
        yield sse_event(error_body(500, str(exc)))
    finally:
        handle.cancel()  # the client went away mid-stream (or a no-op once finished)
    yield DONE_EVENT


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


# The last event of every stream (OpenAI's terminator).
DONE_EVENT = "data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> str:
    """One Server-Sent Event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
