"""The decode loop of a causal language model: one prefill, then one token per step through the KV cache.

``decode_batch`` runs any number of prompts together, padded on the left with an attention mask
and position ids that count real tokens only, so each row sees what it would see alone. Every
step feeds the model only the newest token and the KV cache (transformers' ``DynamicCache``,
passed as ``cache``, which replaced ``past_key_values`` in transformers 5), never the prefix
again. ``TextStream`` turns one row's token ids into text pieces as they are decoded, the way
text-generation-inference's incremental detokenizer does: it decodes a small window of ids and
emits the new suffix only once it is no longer an incomplete UTF-8 character, and it holds back
text that may be the start of a stop string until it is known not to be one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from kiln.runtime.sampling import Sampler, mark_seen

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

FinishReason = Literal["stop", "length"]
_INCOMPLETE = "\ufffd"  # what a byte-level decoder gives for a cut multi-byte character


class TextStream:
    """One generated text: token ids in, text pieces out, stop strings cut off (never returned)."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # decoded so far, cut before a stop string once one appears
        self.new_tokens = 0  # tokens generated, EOS included
        self.finish_reason: FinishReason | None = None
        self._prefix = 0  # decoding window: ids[_prefix:_read] are decoded already
        self._read = 0
        self._emitted = 0  # characters of ``text`` handed out

    @property
    def is_stopped(self) -> bool:
        """A stop string has appeared in the text."""
        return self.finish_reason == "stop"

    def add(self, token_id: int) -> str:
        """Take one generated (non-EOS) token and return the text it releases (maybe empty);
        nothing once the text has finished."""
        if self.finish_reason is not None:
            return ""
        self.ids.append(token_id)
        self.new_tokens += 1
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(is_final=False)

    def finish(self, reason: FinishReason) -> str:
        """End the text: decode what is still pending (even an incomplete character) and release it all."""
        if self.finish_reason is None:
            before = self._decode(self.ids[self._prefix : self._read])
            after = self._decode(self.ids[self._prefix :])
            self.text += after[len(before) :]
            piece = self._release(is_final=True)
            self.finish_reason = self.finish_reason or reason
            return piece
        return ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _release(self, *, is_final: bool) -> str:
        found = [i for i in (self.text.find(s, self._emitted) for s in self.stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.finish_reason = "stop"
            is_final = True
        end = len(self.text) if is_final else len(self.text) - self._held_back()
        piece = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return piece

    def _held_back(self) -> int:
        """Length of the longest end of the text that a stop string starts with."""
        tail = self.text[self._emitted :]
        return max(
            (k for s in self.stop for k in range(min(len(s) - 1, len(tail)), 0, -1) if tail.endswith(s[:k])),
            default=0,
        )


def decode_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    streams: Sequence[TextStream],
    sampler: Sampler,
    max_new_tokens: int,
    eos_ids: frozenset[int],
    pad_id: int,
    generator: torch.Generator | None,
) -> Iterator[tuple[int, str]]:
    """Generate for every prompt at once, yielding ``(row, text piece)`` as pieces are decoded.

    Each row's ``TextStream`` holds its text, token count and finish reason when this ends.
    """
    import torch

    device = next(model.parameters()).device
    batch = _left_padded(prompts, pad_id, device)
    seen = _seen_tokens(batch, model.config.vocab_size) if sampler.repetition_penalty != 1.0 else None
    with torch.inference_mode():
        out = model(**batch.model_inputs(), use_cache=True, logits_to_keep=1)
    cache = out.cache
    logits = out.logits[:, -1, :]
    for step in range(max_new_tokens):
        with torch.inference_mode():
            tokens = sampler.next_tokens(logits, seen, generator)
        for row, token in enumerate(tokens.tolist()):
            stream = streams[row]
            if stream.finish_reason is not None:
                continue
            if token in eos_ids:
                stream.new_tokens += 1
                piece = stream.finish("stop")
            else:
                piece = stream.add(token)
                if stream.is_stopped or stream.new_tokens >= max_new_tokens:
                    piece += stream.finish("length")
            if piece:
                yield row, piece
        if step == max_new_tokens - 1 or all(s.finish_reason is not None for s in streams):
            return
        with torch.inference_mode():
            if seen is not None:
                mark_seen(seen, tokens)
            batch.advance()
            out = model(
                input_ids=tokens.unsqueeze(-1), **batch.step_inputs(), cache=cache, use_cache=True
            )
        cache = out.cache
        logits = out.logits[:, -1, :]


class _LeftPadded:
    """Prompt ids padded on the left, with the mask and positions the model needs for them."""

    def __init__(self, input_ids: torch.Tensor, mask: torch.Tensor, *, is_padded: bool) -> None:
        self.input_ids = input_ids
        self.mask = mask
        self.is_padded = is_padded
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        if not self.is_padded:  # the model's own defaults; nothing to build per step
            return {"input_ids": self.input_ids}
        return {"input_ids": self.input_ids, "attention_mask": self.mask, "position_ids": self.positions}

    def advance(self) -> None:
        if self.is_padded:
            self.mask = _with_new_column(self.mask)
            self.positions = self.positions[:, -1:] + 1

    def step_inputs(self) -> dict[str, torch.Tensor]:
        if not self.is_padded:
            return {}
        return {"attention_mask": self.mask, "position_ids": self.positions}


def _with_new_column(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with one more column of ones (the token just generated)."""
    import torch

    return torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> _LeftPadded:
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    is_padded = any(len(p) != width for p in prompts)
    return _LeftPadded(input_ids.to(device), mask.to(device), is_padded=is_padded)


def _seen_tokens(batch: _LeftPadded, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] True where a token id occurs in the row's prompt (padding excluded)."""
    import torch

    ids = batch.input_ids
    # Under left padding the last column is always a real token: it stands in for the padding.
    real = torch.where(batch.mask.bool(), ids, ids[:, -1:])
    seen = torch.zeros((ids.shape[0], vocab_size), dtype=torch.bool, device=ids.device)
    return seen.scatter_(1, real, True)
