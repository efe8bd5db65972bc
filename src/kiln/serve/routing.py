"""Which version of a model answers a request: pinned, canary-weighted, or the newest.

Canary weights split traffic between versions (``{3: 90, 4: 10}``). With a sticky key (a request
header such as a user id), the same key always lands on the same version: the key's sha256 picks
a bucket in the cumulative weights, so changing an unrelated key never moves it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Router:
    """Chooses a version among the loaded ones."""

    weights: tuple[tuple[int, int], ...] = ()  # (version, weight) pairs; empty: newest version
    sticky_header: str | None = None  # request header whose value pins a version
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_weights(cls, weights: Mapping[int, int], sticky_header: str | None = None) -> Router:
        """A router with positive weights only, sorted by version."""
        kept = tuple(sorted((int(v), int(w)) for v, w in weights.items() if w > 0))
        return cls(weights=kept, sticky_header=sticky_header)

    def without(self, version: int) -> Router:
        """The same router with ``version`` removed from the weights."""
        kept = tuple((v, w) for v, w in self.weights if v != version)
        return Router(weights=kept, sticky_header=self.sticky_header, rng=self.rng)

    def choose(self, loaded: list[int], key: str | None = None) -> int:
        """Pick a version from ``loaded`` (non-empty); weights of unloaded versions are skipped."""
        candidates = [(v, w) for v, w in self.weights if v in loaded]
        if not candidates:
            return max(loaded)
        total = sum(w for _, w in candidates)
        if key is not None and self.sticky_header is not None:
            point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % total
        else:
            point = self.rng.randrange(total)
        for version, weight in candidates:
            if point < weight:
                return version
            point -= weight
        return candidates[-1][0]
