"""Run a recommendation package: a user id (or a cold-start user's features) in, top-K items out.

Every item vector is computed once at load (``item_matrix``, the item bias folded in as one more
column), and so is every known user's vector; a batch of queries is then ranked over the whole
catalogue with one matrix product, items the user has already seen masked out, and the top K
taken with ``argpartition``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import PackageError
from kiln.runtime.package import packaged_file, read_manifest, require_task
from kiln.runtime.preprocessing import InputError

MAX_K = 1000


@dataclass(frozen=True)
class RecommendQuery:
    """One request for recommendations."""

    user_id: str | None = None  # a known user's id; unknown ids need ``features``
    features: Mapping[str, Any] = field(default_factory=dict)  # raw user features (cold start)
    k: int = 10  # how many items to return
    exclude_seen: bool = True  # leave out items the user interacted with


def parse_query(raw: Any, where: str = "query") -> RecommendQuery:
    """A ``RecommendQuery`` from a JSON-like mapping (or a bare user id string).

    Raises:
        InputError: a wrong type or an out-of-range ``k``, naming the field.
    """
    if isinstance(raw, RecommendQuery):
        return raw
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        raw = {"user_id": raw}
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected an object with user_id or features, got {type(raw).__name__}")
    allowed = {"user_id", "features", "k", "exclude_seen"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise InputError(f"{where}: unknown fields {extra}; allowed: {', '.join(sorted(allowed))}")
    user_id = raw.get("user_id")
    if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, (str, int))):
        raise InputError(f"{where}.user_id: expected a string, got {type(user_id).__name__}")
    features = raw.get("features") or {}
    if not isinstance(features, Mapping):
        raise InputError(f"{where}.features: expected an object of feature values")
    k = raw.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"{where}.k: expected an integer in 1..{MAX_K}, got {k!r}")
    if user_id is None and not features:
        raise InputError(f"{where}: give a user_id, or features for a cold-start user")
    return RecommendQuery(
        user_id=None if user_id is None else str(user_id),
        features=dict(features),
        k=k,
        exclude_seen=bool(raw.get("exclude_seen", True)),
    )


class Recommender:
    """A loaded recommendation package."""

    task = "recommendation"

    def __init__(self, *, path: Path, manifest: dict[str, Any], net: Any, tables: dict[str, Any]) -> None:
        import torch

        from kiln.runtime.towers import encode_fields

        self.path = path
        self.manifest = manifest
        self.labels: list[str] = []
        self.net = net
        prep = manifest["preprocessing"]
        self.user_specs: list[dict[str, Any]] = prep["user_fields"]
        self.item_specs: list[dict[str, Any]] = prep["item_fields"]
        users, items, seen = tables["users"], tables["items"], tables["seen"]
        self.user_ids: list[str] = users["user_id"].tolist()
        self.item_ids: list[str] = items["item_id"].tolist()
        self.user_index = {u: i + 1 for i, u in enumerate(self.user_ids)}
        title = prep.get("item_title_column")
        self.titles: list[str] | None = items[title].tolist() if title in items.columns else None
        user_cats, _ = encode_fields(self.user_specs, users.to_dict("records"))
        item_cats, item_bags = encode_fields(self.item_specs, items.to_dict("records"))
        # Row 0 of the user matrix is the unknown user, with no features.
        user_cats = np.concatenate([np.zeros((1, user_cats.shape[1]), dtype=np.int64), user_cats])
        with torch.inference_mode():
            user_vecs = net.user_vectors(torch.arange(len(user_cats)), torch.from_numpy(user_cats)).float().numpy()
            item_vecs = net.item_vectors(
                torch.arange(len(self.item_ids)), torch.from_numpy(item_cats), torch.from_numpy(item_bags)
            ).float().numpy()
            bias = net.item_bias.detach().float().numpy()
        self.user_matrix = np.concatenate([user_vecs, np.ones((len(user_vecs), 1), np.float32)], axis=1)
        self.item_matrix = np.ascontiguousarray(np.concatenate([item_vecs, bias[:, None]], axis=1))
        item_pos = {it: i for i, it in enumerate(self.item_ids)}
        self.seen: list[np.ndarray] = [np.empty(0, np.int64) for _ in range(len(self.user_ids) + 1)]
        for user, group in seen.groupby("user_id"):
            if user in self.user_index:
                self.seen[self.user_index[user]] = np.array([item_pos[i] for i in group["item_id"]], np.int64)

    @property
    def num_items(self) -> int:
        """Number of items in the catalogue."""
        return len(self.item_ids)

    def check(self, queries: Sequence[Any]) -> list[RecommendQuery]:
        """Parse and check queries before they are batched.

        Raises:
            InputError: an unknown user id without features, or an unknown feature name.
        """
        if isinstance(queries, (str, bytes)) or len(queries) == 0:
            raise InputError("expected a non-empty list of queries")
        names = {s["name"] for s in self.user_specs}
        checked = []
        for i, raw in enumerate(queries):
            query = parse_query(raw, f"queries[{i}]")
            if query.user_id is not None and query.user_id not in self.user_index and not query.features:
                raise InputError(
                    f"queries[{i}].user_id: unknown user id {query.user_id!r}; "
                    f"send features ({', '.join(sorted(names))}) to recommend for a new user"
                )
            unknown = sorted(set(query.features) - names)
            if unknown:
                raise InputError(
                    f"queries[{i}].features: unknown features {unknown}; allowed: {', '.join(sorted(names))}"
                )
            checked.append(query)
        return checked

    def user_vectors(self, queries: Sequence[RecommendQuery]) -> np.ndarray:
        """Query vectors (B, dim + 1): precomputed for known users, the user tower for new ones."""
        rows = np.empty((len(queries), self.user_matrix.shape[1]), dtype=np.float32)
        cold = []
        for i, q in enumerate(queries):
            index = self.user_index.get(q.user_id) if q.user_id is not None else None
            if index is None:
                cold.append(i)
            else:
                rows[i] = self.user_matrix[index]
        if cold:
            import torch

            from kiln.runtime.towers import encode_fields

            cats, _ = encode_fields(self.user_specs, [queries[i].features for i in cold])
            with torch.inference_mode():
                vecs = self.net.user_vectors(torch.zeros(len(cold), dtype=torch.long), torch.from_numpy(cats))
            rows[cold] = np.concatenate([vecs.float().numpy(), np.ones((len(cold), 1), np.float32)], axis=1)
        return rows

    def scores(self, queries: Sequence[RecommendQuery]) -> np.ndarray:
        """Scores of every item for each query (B, items), seen items set to -inf."""
        scores = self.user_vectors(queries) @ self.item_matrix.T
        for i, q in enumerate(queries):
            index = self.user_index.get(q.user_id) if q.user_id is not None else None
            if q.exclude_seen and index is not None:
                scores[i, self.seen[index]] = -np.inf
        return scores

    def predict(self, queries: Sequence[Any]) -> list[dict[str, Any]]:
        """The same as ``recommend``, so tools written for any package (speed) run it too."""
        return self.recommend(queries)

    def recommend(self, queries: Sequence[Any]) -> list[dict[str, Any]]:
        """Top-K items with scores for each query (a user id, a mapping, or a ``RecommendQuery``)."""
        checked = self.check(queries)
        scores = self.scores(checked)
        k_max = min(max(q.k for q in checked), self.num_items)
        top = np.argpartition(-scores, k_max - 1, axis=1)[:, :k_max]
        out = []
        for i, q in enumerate(checked):
            row = top[i][np.argsort(-scores[i, top[i]], kind="stable")]
            row = [j for j in row if np.isfinite(scores[i, j])][: q.k]
            items = []
            for j in row:
                item: dict[str, Any] = {"item_id": self.item_ids[j], "score": float(scores[i, j])}
                if self.titles is not None:
                    item["title"] = self.titles[j]
                items.append(item)
            is_known = q.user_id is not None and q.user_id in self.user_index
            out.append({"user_id": q.user_id, "cold_start": not is_known, "items": items})
        return out


def load_recommender(path: str | Path, *, num_threads: int | None = None, verify: bool = True) -> Recommender:
    """Load a recommendation package folder into a ``Recommender``.

    Args:
        path: the package folder (holding ``kiln.json``).
        num_threads: intra-op threads for torch; the library default if empty.
        verify: check every file's sha256 against the manifest first.

    Raises:
        PackageError: the package is missing, incomplete or altered, or holds another task
            (the message names it).
    """
    folder = Path(path)
    manifest = read_manifest(folder, verify=verify)
    require_task(folder, manifest, ("recommendation",))
    return recommender_from_manifest(folder, manifest, num_threads=num_threads)


def recommender_from_manifest(
    folder: Path, manifest: dict[str, Any], *, num_threads: int | None = None
) -> Recommender:
    """Build a ``Recommender`` from a verified package folder and its manifest.

    Raises:
        PackageError: weights that do not match the architecture, or a missing table.
    """
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    from kiln.runtime.towers import build_recommender

    if num_threads:
        torch.set_num_threads(num_threads)
    arch = manifest["architecture"]
    net = build_recommender(arch["params"])
    state = dequantize_rows(load_file(str(packaged_file(folder, manifest, arch["weights"]))))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PackageError(
            f"{folder}: weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    net.eval()
    prep = manifest["preprocessing"]
    tables = {}
    for key in ("users", "items", "seen"):
        name = prep[f"{key}_file"]
        try:
            tables[key] = pd.read_csv(packaged_file(folder, manifest, name), dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError) as exc:
            raise PackageError(f"{folder}: cannot read {name}: {exc}") from None
    return Recommender(path=folder, manifest=manifest, net=net, tables=tables)


def quantize_rows(table: Any) -> tuple[Any, Any]:
    """Symmetric int8 per-row quantization of an embedding table: (int8 values, fp32 scales)."""
    import torch

    scale = table.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    values = torch.round(table / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values, scale.float()


def dequantize_rows(state: dict[str, Any]) -> dict[str, Any]:
    """Turn ``name`` (int8) + ``name.int8_scale`` pairs back into float tables; others unchanged."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(".int8_scale"):
            continue
        scale = state.get(f"{name}.int8_scale")
        out[name] = tensor if scale is None else tensor.float() * scale[:, None]
    return out
