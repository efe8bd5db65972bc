"""The thread plan: every core for a batch that runs alone, one thread per batch under load."""

from __future__ import annotations

import pytest

from kiln.serve.config import ServeConfig
from kiln.serve.threads import ThreadPlan, plan_threads


@pytest.mark.parametrize(
    ("batches_in_flight", "is_waiting", "threads"),
    [
        (1, False, 4),  # alone, nothing waiting: every core
        (1, True, 1),  # alone, but requests wait for the next batch: it will run beside this one
        (2, False, 1),  # another batch computes
        (3, True, 1),
    ],
)
def test_thread_plan_threads_for_follows_the_load(batches_in_flight: int, is_waiting: bool, threads: int) -> None:
    plan = ThreadPlan(alone=4, shared=1)
    assert plan.threads_for(batches_in_flight=batches_in_flight, is_waiting=is_waiting) == threads


@pytest.mark.parametrize(
    ("cpus", "workers", "alone", "counts"),
    [
        (2, 1, 2, (1, 2)),
        (8, 2, 4, (1, 4)),
        (2, 2, 1, (1,)),  # one core per worker: nothing to widen
        (1, 1, 1, (1,)),
    ],
)
def test_plan_threads_auto_gives_a_lone_batch_the_cores_of_its_worker(
    cpus: int, workers: int, alone: int, counts: tuple[int, ...]
) -> None:
    plan = plan_threads(ServeConfig(workers=workers), cpus=cpus)
    assert plan == ThreadPlan(alone=alone, shared=1)
    assert plan.counts == counts


def test_plan_threads_fixed_number_gives_every_call_that_many() -> None:
    plan = plan_threads(ServeConfig(num_threads=3), cpus=8)
    assert plan == ThreadPlan(alone=3, shared=3)
    assert plan.threads_for(batches_in_flight=1, is_waiting=False) == 3
    assert plan.counts == (3,)
