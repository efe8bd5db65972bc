"""A decode batch that sequences join and leave between steps (continuous batching).

``KVBatch`` holds one KV cache for every running sequence, padded on the left as
``decode_batch`` pads a static batch: each row has an attention mask over the cache and its own
position, so every row sees what it would see alone. A sequence prefills alone into its own
cache (``Prefill``, a chunk of tokens per call, so a long prompt never holds up the running
sequences for more than one chunk), then ``join`` merges that cache into the batch: both sides
are left-padded to the longer length and concatenated on the batch axis. ``leave`` keeps the
other rows and drops cache columns that have become padding in every row.

Merging copies the whole cache once per join or leave. transformers' ``DynamicLayer`` already
copies it once per step (it grows by ``torch.cat``), so a join or leave costs about one more
step's copy; a pre-allocated cache per slot would save those copies but needs an attention
kernel that takes a different length per row, which the HF models do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Prefill:
    """One sequence's prompt, fed to the model a chunk at a time into its own cache."""

    def __init__(self, model: Any, prompt_ids: Sequence[int]) -> None:
        if not prompt_ids:
            raise ValueError("a prefill needs at least one prompt token")
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.done = 0  # prompt tokens already in the cache
        self.cache: Any = None
        self.logits: torch.Tensor | None = None  # [1, vocab] after the last prompt token

    @property
    def is_done(self) -> bool:
        """Whether every prompt token is in the cache."""
        return self.done == len(self.prompt_ids)

    def run_chunk(self, max_tokens: int) -> int:
        """Feed the next ``max_tokens`` (at most) prompt tokens; return how many were fed."""
        import torch

        device = next(self.model.parameters()).device
        chunk = self.prompt_ids[self.done : self.done + max_tokens]
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([chunk], device=device),
            "position_ids": torch.arange(self.done, self.done + len(chunk), device=device).unsqueeze(0),
            "use_cache": True,
            "logits_to_keep": 1,
        }
        if self.cache is not None:
            inputs["cache"] = self.cache
        with torch.inference_mode():
            out = self.model(**inputs)
        self.cache = out.cache
        self.done += len(chunk)
        if self.is_done:
            self.logits = out.logits[:, -1, :]
        return len(chunk)


class KVBatch:
    """The running sequences' shared KV cache, attention mask and positions."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.keys: list[int] = []  # the sequence of each row, in row order
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # [rows, cache length], 1 on real tokens
        self._positions: torch.Tensor | None = None  # [rows], the position of each row's next token
        # Whether some row has padding; without any, the model's own mask and positions are
        # right and building them each step is skipped (as decode_batch does).
        self._is_padded = False

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def cache_cells(self) -> int:
        """Token slots the cache holds now, padding included (rows x cache length)."""
        return 0 if self._mask is None else int(self._mask.numel())

    def join(self, key: int, prefill: Prefill) -> None:
        """Add a sequence whose prefill is done as the last row."""
        import torch

        if not prefill.is_done:
            raise ValueError(f"sequence {key!r} joins before its prefill is done")
        length = len(prefill.prompt_ids)
        device = next(self.model.parameters()).device
        mask = torch.ones((1, length), dtype=torch.long, device=device)
        position = torch.tensor([length], dtype=torch.long, device=device)
        if self._cache is None:
            self._cache, self._mask, self._positions = prefill.cache, mask, position
        else:
            assert self._mask is not None and self._positions is not None
            width = max(self._mask.shape[1], length)
            for mine, theirs in zip(_layers(self._cache), _layers(prefill.cache), strict=True):
                mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
                mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
            self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask, width, dim=1)])
            self._positions = torch.cat([self._positions, position])
            self._is_padded = not bool(self._mask.all())
        prefill.cache = None
        self.keys.append(key)

    def leave(self, keys: Sequence[int]) -> None:
        """Drop the rows of ``keys`` and the cache columns that only padding fills now."""
        import torch

        gone = set(keys)
        keep = [row for row, key in enumerate(self.keys) if key not in gone]
        if len(keep) == len(self.keys):
            return
        self.keys = [self.keys[row] for row in keep]
        if not keep:
            self._cache = self._mask = self._positions = None
            self._is_padded = False
            return
        assert self._mask is not None and self._positions is not None
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(dim=0).long().argmax())  # the first column some row still uses
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = mask[:, first:]
        self._positions = self._positions.index_select(0, index)
        self._is_padded = not bool(self._mask.all())

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed each row its newest token (in row order); return the next logits, [rows, vocab]."""
        import torch

        if len(tokens) != len(self.keys) or self._mask is None or self._positions is None:
            raise ValueError(f"a step needs one token per row ({len(self.keys)}), got {len(tokens)}")
        device = self._mask.device
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(tokens), 1))], dim=1)
        padding: dict[str, torch.Tensor] = {}
        if self._is_padded:
            padding = {"attention_mask": self._mask, "position_ids": self._positions.unsqueeze(-1)}
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor(list(tokens), device=device).unsqueeze(-1),
                cache=self._cache,
                use_cache=True,
                **padding,
            )
        self._cache = out.cache
        self._positions = self._positions + 1
        return out.logits[:, -1, :]


def check_cache_layout(model: Any) -> None:
    """Refuse a model whose KV cache is not plain growing layers (sliding windows, quantized caches).

    Raises:
        ValueError: naming the cache layer type found.
    """
    import torch
    from transformers.cache_utils import DynamicLayer

    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[0]], device=device), use_cache=True)
    for layer in out.cache.layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(
                f"continuous batching needs a growing KV cache (DynamicLayer); this model's cache "
                f"has {type(layer).__name__} layers"
            )


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def _left_pad(tensor: torch.Tensor, width: int, *, dim: int = 2) -> torch.Tensor:
    """``tensor`` with zeros before its entries along ``dim`` up to ``width``."""
    import torch

    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
