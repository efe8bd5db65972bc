"""Recommendation models and their feature encoding, shared by training and the runtime.

One network class holds the three recommenders Kiln trains, so a package loads the same way
whichever it holds:

- ``popularity``: one bias per item (log of its training count); every user gets the same list.
- ``mf``: matrix factorisation, user and item id embeddings plus an item bias (trained with BPR,
  Rendle et al. 2009).
- ``two-tower``: a user tower (id + user features) and an item tower (id + item features), each
  an MLP to a shared space, scored by dot product (Covington et al. 2016; Yi et al. 2019).

A score is always ``user_vector . item_vector + item_bias``, so serving precomputes every item
vector at load and ranks all items with one matrix product.

Raw features become indices here through field specs stored in the package manifest: each field
names its column, a transform (``category``, ``age_group``, ``prefix1``, ``decade``, ``tokens``)
and its vocabulary. Index 0 always means unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

# MovieLens-1M's age groups, used for any integer age feature.
_AGE_EDGES = (18, 25, 35, 45, 50, 56)
_AGE_GROUPS = ("under-18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def transform_value(transform: str, value: Any) -> list[str]:
    """The vocabulary tokens of one raw value (one token, several for ``tokens``, none if empty)."""
    text = "" if value is None else str(value).strip()
    if not text:
        return []
    if transform == "category":
        return [text]
    if transform == "prefix1":
        return [text[0].upper()]
    if transform == "age_group":
        if not text.isdigit():
            return []
        age = int(text)
        return [_AGE_GROUPS[sum(age >= edge for edge in _AGE_EDGES)]]
    if transform == "decade":
        return [f"{text[:3]}0s"] if text[:4].isdigit() else []
    if transform == "tokens":
        return text.split()
    raise ValueError(f"unknown feature transform {transform!r}")


def build_field_specs(table: Any, fields: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Field specs (name, transform, vocabulary) learned from a raw feature table's columns."""
    specs = []
    for name, transform in fields:
        tokens = {tok for value in table[name] for tok in transform_value(transform, value)}
        specs.append({"name": name, "transform": transform, "vocab": sorted(tokens)})
    return specs


def encode_fields(
    specs: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Encode raw feature rows: (categorical indices (N, F), normalised token bags (N, T)).

    Single-valued fields give an index (0 unknown); ``tokens`` fields give a multi-hot row,
    concatenated across such fields and scaled to sum to one per field.
    """
    single = [s for s in specs if s["transform"] != "tokens"]
    multi = [s for s in specs if s["transform"] == "tokens"]
    lookups = {s["name"]: {tok: i + 1 for i, tok in enumerate(s["vocab"])} for s in specs}
    cats = np.zeros((len(rows), len(single)), dtype=np.int64)
    bags = np.zeros((len(rows), sum(len(s["vocab"]) for s in multi)), dtype=np.float32)
    for r, row in enumerate(rows):
        for f, spec in enumerate(single):
            tokens = transform_value(spec["transform"], row.get(spec["name"]))
            cats[r, f] = lookups[spec["name"]].get(tokens[0], 0) if tokens else 0
        offset = 0
        for spec in multi:
            lookup = lookups[spec["name"]]
            hits = [lookup.get(t, 0) - 1 for t in transform_value("tokens", row.get(spec["name"]))]
            hits = [h for h in hits if h >= 0]
            if hits:
                bags[r, [offset + h for h in hits]] = 1.0 / len(hits)
            offset += len(spec["vocab"])
    return cats, bags


def field_cardinalities(specs: Sequence[Mapping[str, Any]]) -> list[int]:
    """Vocabulary sizes (plus the unknown index) of the single-valued fields."""
    return [len(s["vocab"]) + 1 for s in specs if s["transform"] != "tokens"]


def token_width(specs: Sequence[Mapping[str, Any]]) -> int:
    """Width of the concatenated token bags of the ``tokens`` fields."""
    return sum(len(s["vocab"]) for s in specs if s["transform"] == "tokens")


class RecommenderNet(nn.Module):
    """Popularity, matrix factorisation or two-tower scorer (see the module docstring)."""

    def __init__(
        self,
        *,
        kind: str,
        num_users: int,
        num_items: int,
        dim: int,
        hidden_size: int,
        field_dim: int,
        user_cards: Sequence[int],
        item_cards: Sequence[int],
        item_token_width: int,
    ) -> None:
        super().__init__()
        if kind not in ("popularity", "mf", "two-tower"):
            raise ValueError(f"unknown recommender kind {kind!r}")
        self.kind = kind
        self.dim = 0 if kind == "popularity" else dim
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        if kind == "popularity":
            return
        self.user_id = nn.Embedding(num_users, dim)
        self.item_id = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user_id.weight, std=0.05)
        nn.init.normal_(self.item_id.weight, std=0.05)
        if kind == "mf":
            return
        self.user_fields = nn.ModuleList(nn.Embedding(c, field_dim) for c in user_cards)
        self.item_fields = nn.ModuleList(nn.Embedding(c, field_dim) for c in item_cards)
        self.item_tokens = nn.Linear(item_token_width, field_dim, bias=False) if item_token_width else None
        user_in = dim + field_dim * len(user_cards)
        item_in = dim + field_dim * (len(item_cards) + (1 if item_token_width else 0))
        self.user_mlp = nn.Sequential(nn.Linear(user_in, hidden_size), nn.ReLU(), nn.Linear(hidden_size, dim))
        self.item_mlp = nn.Sequential(nn.Linear(item_in, hidden_size), nn.ReLU(), nn.Linear(hidden_size, dim))

    def user_vectors(self, user_idx: torch.Tensor, user_cats: torch.Tensor) -> torch.Tensor:
        """User vectors (B, dim); user index 0 is the unknown (cold-start) user."""
        if self.kind == "popularity":
            return torch.zeros(len(user_idx), 0)
        ids = self.user_id(user_idx)
        if self.kind == "mf":
            # The unknown user has no factors: it is ranked by item bias alone.
            return ids * (user_idx != 0).unsqueeze(1).to(ids.dtype)
        parts = [ids] + [emb(user_cats[:, f]) for f, emb in enumerate(self.user_fields)]
        return self.user_mlp(torch.cat(parts, dim=1))

    def item_vectors(self, item_idx: torch.Tensor, item_cats: torch.Tensor, item_bags: torch.Tensor) -> torch.Tensor:
        """Item vectors (B, dim) of the given items and their features."""
        if self.kind == "popularity":
            return torch.zeros(len(item_idx), 0)
        ids = self.item_id(item_idx)
        if self.kind == "mf":
            return ids
        parts = [ids] + [emb(item_cats[:, f]) for f, emb in enumerate(self.item_fields)]
        if self.item_tokens is not None:
            parts.append(self.item_tokens(item_bags))
        return self.item_mlp(torch.cat(parts, dim=1))


def build_recommender(params: Mapping[str, Any]) -> RecommenderNet:
    """Build a ``RecommenderNet`` from the ``architecture.params`` mapping of a manifest."""
    return RecommenderNet(
        kind=str(params["kind"]),
        num_users=int(params["num_users"]),
        num_items=int(params["num_items"]),
        dim=int(params["dim"]),
        hidden_size=int(params["hidden_size"]),
        field_dim=int(params["field_dim"]),
        user_cards=[int(c) for c in params["user_cards"]],
        item_cards=[int(c) for c in params["item_cards"]],
        item_token_width=int(params["item_token_width"]),
    )
