"""``POST /v1/apps/{name}:answer``: the customer-service assistant served from a support package.

The intent classifier runs through the model's batcher like any prediction (routing, deadline,
metrics, observers); a confident intent is then answered from the package's FAQ index by nearest
neighbour. A message is handed off to a human, with the reason, when its out-of-scope score is
above the package's calibrated threshold (``out_of_scope``: no intent covers it), when its
confidence is below the calibrated hand-off threshold (``low_confidence``), or when no FAQ question
is close enough (``no_faq_match``). The out-of-scope score comes from the same batched forward
pass as the intent. A package whose recipe names a chat package writes its answer with that model from
the nearest FAQ entries instead (``kiln.serve.grounded``), streamed when asked.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from kiln.errors import HTTPProblem, KilnError
from kiln.runtime.grounding import answering_entries
from kiln.serve import grounded
from kiln.serve.rest import ERRORS, service_of

router = APIRouter(tags=["Applications"], responses=ERRORS)


class AnswerRequest(BaseModel):
    """A customer's message."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=2000, examples=["I still have not received my new card"])
    stream: StrictBool = Field(
        default=False,
        description="answer with Server-Sent Events (apps with a chat package): text pieces, then the whole answer",
    )


class Source(BaseModel):
    """A FAQ entry a generated answer was written from."""

    id: int = Field(description="the entry's row in the package's FAQ, from 0")
    question: str
    score: float = Field(description="cosine similarity of the message and the entry's question")


class AnswerResponse(BaseModel):
    """The intent, its confidence, and an answer or a hand-off."""

    model: str
    version: int
    intent: str
    confidence: float
    oos_score: float | None = Field(
        default=None, description="how unlike every known intent the message is (higher: further out of scope)"
    )
    oos_threshold: float | None = Field(default=None, description="out-of-scope scores above this are handed off")
    handoff: bool = Field(description="true: route the message to a human")
    reason: Literal["out_of_scope", "low_confidence", "no_faq_match"] | None = Field(
        default=None, description="why the message is handed off"
    )
    detail: str | None = Field(default=None, description="the hand-off reason in words")
    answer: str | None = None
    faq_question: str | None = None
    answer_score: float | None = None
    sources: list[Source] | None = Field(default=None, description="the FAQ entries an answer was written from")
    chat_model: str | None = Field(default=None, description="name@version of the model that wrote the answer")
    finish_reason: str | None = Field(default=None, description="stop: the answer ended; length: max tokens reached")


@router.post("/v1/apps/{name}:answer", response_model=AnswerResponse, response_model_exclude_none=True)
async def answer(name: str, body: AnswerRequest, request: Request) -> Any:
    """Classify the message's intent, then answer it from the FAQ or hand it off."""
    result = await _answer(name, body, request)
    if body.stream and isinstance(result, dict):  # a hand-off: no text, the final event alone
        return grounded.final_event_stream(result)
    return result


async def _answer(name: str, body: AnswerRequest, request: Request) -> Any:
    service = service_of(request)
    text = body.text.strip()
    if not text:
        raise HTTPProblem(400, "text: the message is empty")
    loaded = service.route(name, None, request.headers)
    app = loaded.model.predictor.manifest.get("app") or {}
    if app.get("kind") != "support":
        raise HTTPProblem(400, f"model {name!r} is not a support app package (a recipe's support section makes one)")
    if body.stream and "grounding" not in app:
        raise HTTPProblem(400, f"stream: support app {name!r} answers from its FAQ verbatim (its recipe names no "
                          "support.chat_package), so there is nothing to stream; send stream false")
    result = await service.predict(loaded, lambda: [text], request.headers)
    model = result.loaded.model
    scores = result.outputs[0]["scores"]
    intent = max(scores, key=scores.get)
    out: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "intent": intent,
        "confidence": scores[intent],
        "handoff": False,
    }
    oos = app.get("out_of_scope")
    if oos is not None:
        out.update(oos_score=result.outputs[0]["oos_score"], oos_threshold=oos["threshold"])
        if out["oos_score"] > oos["threshold"]:
            return dict(out, handoff=True, reason="out_of_scope", detail=(
                f"{oos['method']} out-of-scope score {out['oos_score']:.3f} above the calibrated {oos['threshold']:.3f}"
            ))
    if scores[intent] < app["handoff_threshold"]:
        return dict(out, handoff=True, reason="low_confidence",
                    detail=f"confidence below the calibrated {app['handoff_threshold']:.3f}")
    index = await _faq_index(request, model)
    grounding = app.get("grounding")
    if grounding is None:
        nearest = await asyncio.to_thread(index.search, [text])
    else:  # the message is encoded once: its nearest entry decides, its top_k ground the answer
        nearest = await asyncio.to_thread(index.search_top, text, grounding["top_k"])
    match = nearest[0]
    out.update(faq_question=match.question, answer_score=match.score)
    if match.score < app["min_answer_score"]:
        return dict(out, handoff=True, reason="no_faq_match",
                    detail=f"no FAQ question closer than {app['min_answer_score']}")
    if grounding is not None:
        entries = answering_entries(nearest, min_score=app["min_answer_score"])
        return await grounded.generated_answer(request, out, text=text, entries=entries, app=app,
                                               is_streamed=body.stream)
    return dict(out, answer=match.answer)


async def _faq_index(request: Request, model: Any) -> Any:
    """The FAQ index of a served version, loaded once (off the event loop) and kept."""
    from kiln.runtime.retrieval import load_faq_index

    state = request.app.state
    if not hasattr(state, "faq_indexes"):
        state.faq_indexes, state.faq_lock = {}, asyncio.Lock()
    key = str(model.predictor.path)
    if key in state.faq_indexes:  # loaded: no lock on the request path
        return state.faq_indexes[key]
    async with state.faq_lock:
        if key not in state.faq_indexes:
            encoder = model.predictor.manifest["app"]["encoder"]
            try:
                state.faq_indexes[key] = await asyncio.to_thread(load_faq_index, model.predictor.path, encoder)
            except KilnError as exc:
                raise HTTPProblem(500, f"model {model.name}: {exc}") from None
    return state.faq_indexes[key]
