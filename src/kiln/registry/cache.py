"""``AliasCache``: alias resolutions for processes that follow aliases, revalidated by model stamps.

A serving replica that follows ``name@production`` asks for it over and over; with a hundred
replicas those reads are the registry's hot path. The cache keeps each resolution with the
model's change stamp (``models.stamp``, bumped in the same transaction as every change to the
model's versions or aliases). At most once per ``max_age_s`` it reads the stamps of every model
it holds in one indexed query and drops the resolutions whose model changed; in between it
answers from memory without touching the database.

Staleness bound: a resolution returned at time ``t`` reflects the registry as it was at some
instant no earlier than ``t - max_age_s``. So once an alias moves, every call that starts
``max_age_s`` or more after the move's commit returns the new version. ``max_age_s = 0`` checks
the stamps on every call (one cheap query, never stale).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiln.registry.domain import ModelVersion, Resolution
from kiln.registry.references import parse_reference
from kiln.registry.store import RegistryStore


@dataclass(frozen=True)
class CacheStats:
    """What the cache did since it was made."""

    hits: int  # calls answered from memory
    resolutions: int  # resolution queries (a miss, or a model that changed)
    revalidations: int  # stamp queries (each covers every model held)


class AliasCache:
    """Resolutions of ``name@alias`` and ``name@latest`` at most ``max_age_s`` stale.

    Thread-safe. Errors (unknown model or alias) are not cached.
    """

    def __init__(
        self,
        store: RegistryStore,
        *,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self._store = store
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[tuple[str, str], Resolution] = {}
        self._checked_at: float | None = None
        self._lock = threading.Lock()
        self._hits = self._resolutions = self._revalidations = 0

    def get(self, ref: str) -> ModelVersion:
        """The version ``ref`` names; ``name@N`` is read from the store, never cached.

        Raises:
            BadReferenceError: ``ref`` is not a reference.
            NotFoundError: the model, version or alias does not exist.
        """
        parsed = parse_reference(ref)
        if parsed.version is not None:
            return self._store.get_version(parsed.model, parsed.version)
        assert parsed.alias is not None
        return self.resolve(parsed.model, parsed.alias)

    def resolve(self, model: str, alias: str) -> ModelVersion:
        """The version ``model@alias`` (``latest``: the newest) points at."""
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._max_age_s:
                self._revalidate(now)
            key = (model, alias)
            found = self._entries.get(key)
            if found is not None:
                self._hits += 1
                return found.version
            resolution = self._store.resolve_alias(model, alias)
            self._resolutions += 1
            self._entries[key] = resolution
            return resolution.version

    def stats(self) -> CacheStats:
        """Counts of hits, resolution queries and stamp queries so far."""
        with self._lock:
            return CacheStats(self._hits, self._resolutions, self._revalidations)

    def _revalidate(self, now: float) -> None:
        # ``now`` is taken before the stamps are read, so the bound holds however long the read takes.
        models = {model for model, _ in self._entries}
        if models:
            stamps = self._store.model_stamps(models)
            self._revalidations += 1
            for key, resolution in list(self._entries.items()):
                if stamps.get(key[0]) != resolution.stamp:
                    del self._entries[key]
        self._checked_at = now
