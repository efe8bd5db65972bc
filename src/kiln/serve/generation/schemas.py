"""Request bodies of the OpenAI-compatible endpoints, as OpenAI's API reference defines them.

Only ``n = 1`` is served (one choice per request). Fields a request leaves out take the package's
generation defaults (``kiln.json`` ``generation``), not OpenAI's (``temperature`` 1, completions'
``max_tokens`` 16): a package states how its model should be sampled. ``top_k`` and
``repetition_penalty`` are extensions (as in vLLM). Unknown fields are refused, naming them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI allows up to 4 stop sequences.
MAX_STOP = 4


class TextPart(BaseModel):
    """A text part of a message's content given as a list of parts."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """Options of a streamed answer."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False  # one more chunk before [DONE] with the token counts


class SamplingFields(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, examples=["chat"])
    max_tokens: int | None = Field(default=None, ge=1, description="tokens to generate at most")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="Kiln extension: sample from the k likeliest")
    repetition_penalty: float | None = Field(default=None, gt=0.0, description="Kiln extension")
    stop: str | list[str] | None = Field(default=None, description=f"up to {MAX_STOP} non-empty strings")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int = Field(default=1, ge=1, le=1, description="choices per request; only 1 is served")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty strings")
        return value

    def generation_params(self) -> dict[str, Any]:
        """The fields the request set, under the runtime's parameter names."""
        params: dict[str, Any] = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }
        return {k: v for k, v in params.items() if v is not None}


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="the newer name of max_tokens")

    def generation_params(self) -> dict[str, Any]:
        params = super().generation_params()
        if self.max_completion_tokens is not None and self.max_tokens is None:
            params["max_new_tokens"] = self.max_completion_tokens
        return params


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: one prompt (a string, or a list holding one string)."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"one prompt per request (n = 1 is served), got a list of {len(value)}")
        return value

    def prompt_text(self) -> str:
        """The one prompt."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]
