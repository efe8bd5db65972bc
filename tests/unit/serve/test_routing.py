from collections import Counter

import pytest

from kiln.serve.routing import Router


def test_router_without_weights_picks_the_newest_version() -> None:
    assert Router().choose([3, 7, 5]) == 7


def test_router_splits_by_weight() -> None:
    router = Router.from_weights({3: 90, 4: 10})
    router.rng.seed(0)
    counts = Counter(router.choose([3, 4]) for _ in range(2000))
    assert counts[3] + counts[4] == 2000
    assert 0.85 < counts[3] / 2000 < 0.95


def test_router_sticky_key_always_lands_on_the_same_version() -> None:
    router = Router.from_weights({1: 50, 2: 50}, sticky_header="X-User")
    picks = {key: router.choose([1, 2], key) for key in (f"user-{i}" for i in range(50))}
    assert set(picks.values()) == {1, 2}
    assert all(router.choose([1, 2], key) == version for key, version in picks.items())


@pytest.mark.parametrize(("loaded", "expected"), [([3], 3), ([3, 9], 3)])
def test_router_skips_weights_of_versions_that_are_not_loaded(
    loaded: list[int], expected: int
) -> None:
    assert Router.from_weights({3: 100, 4: 0, 5: 50}).without(5).choose(loaded) == expected
