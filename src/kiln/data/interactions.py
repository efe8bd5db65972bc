"""User-item interactions for recommendation: load them, and split them chronologically.

The split is leave-last-out per user (Rendle et al. 2009; He et al. 2017, "Neural Collaborative
Filtering"): each user's interactions are ordered by time, the last one goes to test, the one
before it to validation, and the rest to train. Evaluation then ranks every item the user has
not interacted with, with no sampled negatives (Krichene & Rendle 2020, "On Sampled Metrics for
Item Recommendation").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kiln.errors import DataError

RECOMMENDATION_DATASETS = ("movielens100k",)


@dataclass(frozen=True)
class Interactions:
    """Interactions with users and items as raw string ids, and their raw feature tables."""

    events: pd.DataFrame  # columns user_id, item_id, timestamp (all interactions)
    users: pd.DataFrame  # user_id plus raw user features (strings)
    items: pd.DataFrame  # item_id plus raw item features (strings)
    origin: str  # where the data came from
    user_fields: tuple[tuple[str, str], ...] = ()  # (column, transform) of user features
    item_fields: tuple[tuple[str, str], ...] = ()  # (column, transform) of item features
    item_title_column: str | None = None  # a human-readable item name, shown with recommendations


@dataclass(frozen=True)
class InteractionSplits:
    """Chronological leave-last-out splits; ``user_ids``/``item_ids`` give the index order."""

    user_ids: list[str]  # user index -> raw id (index 0 is reserved for unknown users, so +1)
    item_ids: list[str]  # item index -> raw id
    train: np.ndarray  # (n, 2) int64 pairs (user index, item index), in time order per user
    validation: np.ndarray  # (users, 2): each user's second-to-last interaction
    test: np.ndarray  # (users, 2): each user's last interaction
    users: pd.DataFrame  # raw user features, rows in user index order
    items: pd.DataFrame  # raw item features, rows in item index order
    fingerprint: str  # sha256 of the split content
    source: Interactions  # the data the splits came from (feature fields, origin)


def is_recommendation_dataset(name: str | None) -> bool:
    """Whether a built-in dataset name is a recommendation (interactions) dataset."""
    return name in RECOMMENDATION_DATASETS


def load_interactions(name: str) -> Interactions:
    """Load a built-in interactions dataset by name.

    Raises:
        DataError: an unknown name or a missing package.
    """
    if name != "movielens100k":
        raise DataError(
            f"unknown recommendation dataset {name!r}; available: {', '.join(RECOMMENDATION_DATASETS)}"
        )
    return _movielens100k()


def _movielens100k() -> Interactions:
    from kiln.data.sources import package_folder

    folder = package_folder("recbole") / "dataset_example" / "ml-100k"
    events = _read_atomic(folder / "ml-100k.inter")
    users = _read_atomic(folder / "ml-100k.user")
    items = _read_atomic(folder / "ml-100k.item").rename(columns={"class": "genres"})
    events = events[["user_id", "item_id", "timestamp"]].assign(
        timestamp=lambda f: pd.to_numeric(f["timestamp"], errors="raise")
    )
    return Interactions(
        events=events,
        users=users,
        items=items,
        origin=f"movielens100k ({folder.name}, recbole)",
        user_fields=(("age", "age_group"), ("gender", "category"), ("occupation", "category"), ("zip_code", "prefix1")),
        item_fields=(("release_year", "decade"), ("genres", "tokens")),
        item_title_column="movie_title",
    )


def _read_atomic(path: object) -> pd.DataFrame:
    # RecBole's atomic files: tab-separated, headers "name:type"; keep every value a string.
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return frame.rename(columns=lambda c: c.split(":")[0])


def split_leave_last_out(data: Interactions, *, min_interactions: int = 3) -> InteractionSplits:
    """Split each user's time-ordered interactions: last -> test, second-to-last -> validation.

    Users with fewer than ``min_interactions`` interactions are dropped (they could not appear
    in all three splits). Repeated (user, item) pairs keep their first occurrence.

    Raises:
        DataError: no user has enough interactions.
    """
    events = data.events.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    events = events.drop_duplicates(["user_id", "item_id"], keep="first")
    counts = events.groupby("user_id")["item_id"].transform("size")
    events = events[counts >= min_interactions]
    if events.empty:
        raise DataError(f"{data.origin}: no user has at least {min_interactions} interactions")
    user_ids = sorted(events["user_id"].unique(), key=_id_key)
    item_ids = sorted(data.items["item_id"].unique(), key=_id_key)
    user_index = {u: i + 1 for i, u in enumerate(user_ids)}
    item_index = {it: i for i, it in enumerate(item_ids)}
    unknown = set(events["item_id"]) - set(item_index)
    if unknown:
        raise DataError(f"{data.origin}: {len(unknown)} interacted items have no row in the item table")
    pairs = np.stack(
        [events["user_id"].map(user_index).to_numpy(), events["item_id"].map(item_index).to_numpy()], axis=1
    ).astype(np.int64)
    position_from_end = events.groupby("user_id").cumcount(ascending=False).to_numpy()
    train = pairs[position_from_end >= 2]
    validation = pairs[position_from_end == 1]
    test = pairs[position_from_end == 0]
    users = data.users.set_index("user_id").reindex(user_ids).fillna("").reset_index()
    items = data.items.set_index("item_id").reindex(item_ids).reset_index()
    digest = hashlib.sha256()
    for part in (train, validation, test):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update("\n".join(user_ids + ["|"] + item_ids).encode())
    return InteractionSplits(
        user_ids=user_ids,
        item_ids=item_ids,
        train=train,
        validation=validation,
        test=test,
        users=users,
        items=items,
        fingerprint="sha256:" + digest.hexdigest(),
        source=data,
    )


def _id_key(value: str) -> tuple[int, object]:
    return (0, int(value)) if value.isdigit() else (1, value)
