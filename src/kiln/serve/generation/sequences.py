"""One sequence as the engine's worker thread runs it: its sampler, its text, the token it takes
each step, and the events the caller receives (pieces of text, then how it ended)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kiln.runtime.decoding import TextStream
from kiln.runtime.sampling import Sampler, mark_seen

if TYPE_CHECKING:
    import torch

    from kiln.runtime.generation import Generator, PreparedPrompt
    from kiln.runtime.kv_batch import Prefill

# stop / length as the runtime decides; cancelled: the client went away; timeout: past the
# request's deadline (X-Request-Timeout-Ms).
EndReason = Literal["stop", "length", "cancelled", "timeout"]


@dataclass(frozen=True, slots=True)
class Piece:
    """Text released by one generated token (never half a character, never a stop string)."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a sequence: why, its token counts and its timings."""

    finish_reason: EndReason
    prompt_tokens: int
    completion_tokens: int  # tokens generated, the closing EOS included
    text: str  # the whole generated text (what was generated so far when cancelled or timed out)
    truncated_tokens: int
    ttft_s: float | None = None  # submitted to first token; None when none came
    duration_s: float = 0.0  # submitted to the end

    @property
    def is_complete(self) -> bool:
        """The model ended the answer (stop or length), rather than the client or a deadline."""
        return self.finish_reason in ("stop", "length")


@dataclass(frozen=True, slots=True)
class Failed:
    """The model failed while the sequence ran."""

    message: str


Event = Piece | Finished | Failed


class ActiveSequence:
    """A sequence as the worker thread sees it, from submission to its end."""

    def __init__(
        self,
        sequence_id: int,
        prepared: PreparedPrompt,
        generator: Generator,
        *,
        submitted_at: float,
        deadline: float | None = None,
    ) -> None:
        import torch

        self.id = sequence_id
        self.prepared = prepared
        config = prepared.config
        self.max_new_tokens = config.max_new_tokens
        self.reserved = len(prepared.token_ids) + config.max_new_tokens
        self.stream = TextStream(generator.tokenizer, config.stop)
        self.sampler = Sampler(
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
        )
        self.is_greedy = config.temperature == 0.0 and config.repetition_penalty == 1.0
        device = next(generator.model.parameters()).device
        self.rng: torch.Generator | None = None
        if config.temperature > 0:
            self.rng = torch.Generator(device=device)
            if prepared.seed is None:
                self.rng.seed()
            else:
                self.rng.manual_seed(prepared.seed)
        self.seen: torch.Tensor | None = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros((1, int(generator.model.config.vocab_size)), dtype=torch.bool, device=device)
            self.seen[0, list(prepared.token_ids)] = True
        self.submitted_at = submitted_at
        self.deadline = deadline  # on the engine's clock; None: no deadline
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.next_token = -1  # the token the next decode step feeds
        self.prefill: Prefill | None = None

    def take(self, token: int, eos_ids: frozenset[int]) -> tuple[str, bool]:
        """Add a generated token to the text; return the text it releases and whether the
        sequence finished (EOS, a stop string or ``max_new_tokens``)."""
        stream = self.stream
        if token in eos_ids:
            stream.new_tokens += 1
            piece = stream.finish("stop")
        else:
            piece = stream.add(token)
            if stream.is_stopped or stream.new_tokens >= self.max_new_tokens:
                piece += stream.finish("length")
        self.next_token = token
        return piece, stream.finish_reason is not None

    def end(self, now: float, reason: EndReason | None = None) -> Finished:
        """The ``Finished`` event: the stream's own reason, or ``reason`` (cancelled, timeout)."""
        finish_reason = reason or self.stream.finish_reason
        assert finish_reason is not None  # a sequence ends by its stream or by the engine
        return Finished(
            finish_reason=finish_reason,
            prompt_tokens=len(self.prepared.token_ids),
            completion_tokens=self.stream.new_tokens,
            text=self.stream.text,
            truncated_tokens=self.prepared.truncated_tokens,
            ttft_s=None if self.first_token_at is None else self.first_token_at - self.submitted_at,
            duration_s=now - self.submitted_at,
        )


def sample_tokens(rows: list[ActiveSequence], logits: torch.Tensor) -> list[int]:
    """One token per row, each by its own settings (greedy rows in one argmax)."""
    import torch

    tokens = [0] * len(rows)
    with torch.inference_mode():
        greedy = [i for i, s in enumerate(rows) if s.is_greedy]
        if greedy:
            picked = logits[greedy].float().argmax(dim=-1).tolist()
            for i, token in zip(greedy, picked, strict=True):
                tokens[i] = int(token)
        for i, sequence in enumerate(rows):
            if sequence.is_greedy:
                continue
            chosen = sequence.sampler.next_tokens(logits[i : i + 1], sequence.seen, sequence.rng)
            if sequence.seen is not None:
                mark_seen(sequence.seen, chosen)
            tokens[i] = int(chosen[0])
    return tokens
