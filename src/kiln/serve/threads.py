"""Intra-op threads per model call, chosen from the load when the call starts.

On CPU the cores can go to one call (intra-op parallelism) or to several one-thread calls side by
side. Under load the second serves more requests (`bench/RESULTS.md`: two one-thread batches in
flight beat one two-thread batch); at light load there is one call to run, and one thread leaves
the other cores idle. ``num_threads: auto`` does both: a batch that starts with no other batch
computing and nothing waiting gets every core of the process, any other batch one thread. A fixed
``num_threads`` gives every call that many.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.serve.config import ServeConfig, available_cpus


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """How many intra-op threads a model call gets, by load."""

    alone: int  # threads of a batch that computes by itself with nothing waiting
    shared: int  # threads of each batch when batches run side by side or requests wait

    @property
    def counts(self) -> tuple[int, ...]:
        """The distinct thread counts a call may get (engines are prepared for each)."""
        return (self.shared,) if self.alone == self.shared else (self.shared, self.alone)

    def threads_for(self, *, batches_in_flight: int, is_waiting: bool) -> int:
        """Threads of a batch starting now.

        Args:
            batches_in_flight: batches computing, the starting one included.
            is_waiting: whether requests wait for a batch (queued or gathering into the next).
        """
        return self.alone if batches_in_flight <= 1 and not is_waiting else self.shared


def plan_threads(config: ServeConfig, *, cpus: int | None = None) -> ThreadPlan:
    """The plan of ``config.num_threads`` over ``cpus`` cores (this process's by default).

    ``auto``: every core left to one worker process when a batch runs alone, one thread each
    under load. A number: that many threads for every call.
    """
    if config.num_threads != "auto":
        return ThreadPlan(alone=config.num_threads, shared=config.num_threads)
    cores = available_cpus() if cpus is None else cpus
    return ThreadPlan(alone=max(1, cores // config.workers), shared=1)
