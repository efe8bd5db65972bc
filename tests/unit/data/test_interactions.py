"""Chronological leave-last-out splits of user-item interactions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kiln.data.interactions import Interactions, is_recommendation_dataset, split_leave_last_out
from kiln.errors import DataError


def _interactions(rows: list[tuple[str, str, int]]) -> Interactions:
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    users = pd.DataFrame({"user_id": sorted({r[0] for r in rows}), "age": "30"})
    items = pd.DataFrame({"item_id": [str(i) for i in range(1, 7)], "genres": "Drama"})
    return Interactions(events=events, users=users, items=items, origin="test")


def test_split_leave_last_out_holds_out_each_users_latest_interactions() -> None:
    data = _interactions(
        [("a", "1", 30), ("a", "2", 10), ("a", "3", 20), ("a", "4", 40), ("b", "5", 5), ("b", "6", 1), ("b", "1", 9)]
    )
    splits = split_leave_last_out(data)
    item = {i: splits.item_ids[i] for i in range(len(splits.item_ids))}
    user = {i + 1: u for i, u in enumerate(splits.user_ids)}
    as_ids = lambda pairs: sorted((user[u], item[i]) for u, i in pairs)  # noqa: E731
    assert as_ids(splits.test) == [("a", "4"), ("b", "1")]
    assert as_ids(splits.validation) == [("a", "1"), ("b", "5")]
    assert as_ids(splits.train) == [("a", "2"), ("a", "3"), ("b", "6")]


def test_split_leave_last_out_drops_users_with_too_few_interactions() -> None:
    data = _interactions([("a", "1", 1), ("a", "2", 2), ("a", "3", 3), ("b", "1", 1), ("b", "2", 2)])
    splits = split_leave_last_out(data)
    assert splits.user_ids == ["a"]
    assert np.all(splits.train[:, 0] == 1)


def test_split_leave_last_out_refuses_data_without_usable_users() -> None:
    with pytest.raises(DataError, match="at least 3 interactions"):
        split_leave_last_out(_interactions([("a", "1", 1)]))


def test_is_recommendation_dataset_names_movielens_only() -> None:
    assert is_recommendation_dataset("movielens100k")
    assert not is_recommendation_dataset("mnist5k")
    assert not is_recommendation_dataset(None)
