"""Choosing the next token from a language model's logits: greedy, or sampled with a seed.

The logits processors follow transformers' ``generation/logits_process.py`` so that a setting
means here what it means there: the repetition penalty of Keskar et al. 2019 (CTRL, arXiv
1909.05858) divides a positive logit and multiplies a negative one; top-k keeps the k largest;
top-p (Holtzman et al. 2019, arXiv 1904.09751) keeps the smallest set of tokens whose
probability reaches p, and always at least the most likely one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


# Temperatures below this sample as greedy decoding (their limit).
_MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Sampler:
    """How one decoding run picks tokens (settings already validated by ``GenerationConfig``)."""

    temperature: float  # 0: greedy
    top_k: int  # 0: off
    top_p: float  # 1: off
    repetition_penalty: float  # 1: off

    def next_tokens(
        self, logits: torch.Tensor, seen: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One token id per row of ``logits`` [batch, vocab]; ``seen`` marks ids already in each text."""
        import torch

        logits = logits.float()
        if seen is not None and self.repetition_penalty != 1.0:
            penalized = torch.where(logits < 0, logits * self.repetition_penalty, logits / self.repetition_penalty)
            logits = torch.where(seen, penalized, logits)
        if self.temperature < _MIN_TEMPERATURE:
            # Dividing by a temperature this small overflows the logits to inf (NaN
            # probabilities); its limit is greedy decoding.
            return logits.argmax(dim=-1)
        logits = logits / self.temperature
        if self.top_k > 0 and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            logits = _keep_top_p(logits, self.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    import torch

    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop the low tail whose total probability stays within 1 - top_p; the top token always stays.
    drop_sorted = cumulative <= 1.0 - top_p
    drop_sorted[:, -1] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def mark_seen(seen: torch.Tensor, token_ids: torch.Tensor) -> None:
    """Mark ``token_ids`` [batch] in ``seen`` [batch, vocab], in place."""
    seen.scatter_(1, token_ids.unsqueeze(-1), True)
