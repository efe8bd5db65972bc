"""The batcher, driven deterministically: batches are held open with ``asyncio.Event``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from kiln.serve.batching import (
    Batcher,
    BatcherStoppedError,
    BatchOutputError,
    DeadlineExceededError,
    QueueFullError,
)
from kiln.serve.config import BatchingConfig
from kiln.serve.threads import ThreadPlan

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HeldHandler:
    """Records each batch; the first ``hold`` batches wait until ``release`` is set."""

    def __init__(self, hold: int = 1) -> None:
        self.batches: list[list[Any]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.hold = hold

    async def __call__(self, inputs: list[Any]) -> Sequence[Any]:
        self.batches.append(list(inputs))
        self.started.set()
        if len(self.batches) <= self.hold:
            await self.release.wait()
        return [x * 10 for x in inputs]


def config(**kw: Any) -> BatchingConfig:
    defaults: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_ms": 0.0, "adaptive": False}
    return BatchingConfig(**(defaults | kw))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_batcher_groups_requests_that_queue_while_a_batch_computes() -> None:
    handler = HeldHandler()
    batcher = Batcher(handler, config())
    batcher.start()
    first = asyncio.create_task(batcher.submit([1]))
    await handler.started.wait()
    rest = [asyncio.create_task(batcher.submit([x])) for x in (2, 3, 4)]
    await settle()
    assert batcher.depth == 3
    handler.release.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    assert handler.batches == [[1], [2, 3, 4]]
    assert [r.outputs for r in results] == [[10], [20], [30], [40]]
    assert [r.batch_size for r in results] == [1, 3, 3, 3]


async def test_batcher_splits_waiting_requests_over_free_slots() -> None:
    """Two slots: what queued behind a held batch is shared between the two slots, in order."""
    handler = HeldHandler(hold=1)
    batcher = Batcher(handler, config(max_concurrent_batches=2))
    first = asyncio.create_task(batcher.submit([0]))
    rest = [asyncio.create_task(batcher.submit([x])) for x in range(1, 7)]
    batcher.start()  # seven requests wait: 7 over 2 free slots -> batches of 4 and 3
    await handler.started.wait()
    await settle()
    assert handler.batches == [[0, 1, 2, 3], [4, 5, 6]]  # the second ran while the first is held
    handler.release.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    assert [r.outputs for r in results] == [[x * 10] for x in range(7)]


async def test_batcher_with_free_slots_sends_a_lone_request_at_once() -> None:
    handler = HeldHandler(hold=0)
    # A one-hour fixed delay would hold a lone request with one slot; with two it goes at once.
    batcher = Batcher(handler, config(max_concurrent_batches=2, max_queue_delay_ms=3_600_000.0))
    batcher.start()
    result = await asyncio.wait_for(batcher.submit([5]), timeout=10)
    await batcher.stop()
    assert result.outputs == [50] and handler.batches == [[5]]


class LoadRecorder(HeldHandler):
    """A held handler that records the load each batch sees as it starts, and its thread count."""

    def __init__(self, hold: int = 1) -> None:
        super().__init__(hold)
        self.batcher: Batcher | None = None
        self.threads: list[int] = []
        self.plan = ThreadPlan(alone=2, shared=1)

    async def __call__(self, inputs: list[Any]) -> Sequence[Any]:
        assert self.batcher is not None
        load = {"batches_in_flight": self.batcher.batches_in_flight, "is_waiting": self.batcher.is_waiting}
        self.threads.append(self.plan.threads_for(**load))
        return await super().__call__(inputs)


async def test_batcher_lone_batch_sees_itself_alone_and_gets_every_core() -> None:
    handler = LoadRecorder(hold=0)
    handler.batcher = batcher = Batcher(handler, config(max_concurrent_batches=2))
    batcher.start()
    for x in (1, 2):  # one request at a time: each batch computes alone
        assert (await batcher.submit([x])).outputs == [x * 10]
    await batcher.stop()
    assert handler.threads == [2, 2]


async def test_batcher_batches_side_by_side_get_one_thread_each() -> None:
    handler = LoadRecorder(hold=2)
    handler.batcher = batcher = Batcher(handler, config(max_concurrent_batches=2))
    tasks = [asyncio.create_task(batcher.submit([x])) for x in range(6)]
    batcher.start()  # six requests over two free slots: two batches at once
    await handler.started.wait()
    await settle()
    assert handler.batches == [[0, 1, 2], [3, 4, 5]]
    assert handler.threads == [1, 1]
    handler.release.set()
    assert [r.outputs for r in await asyncio.gather(*tasks)] == [[x * 10] for x in range(6)]
    await batcher.stop()


async def test_batcher_batch_starting_while_the_next_gathers_gets_one_thread() -> None:
    handler = LoadRecorder(hold=0)
    # A one-hour delay: the second batch gathers (and so counts as waiting) until stop.
    handler.batcher = batcher = Batcher(
        handler, config(max_concurrent_batches=2, max_queue_delay_ms=3_600_000.0)
    )
    tasks = [asyncio.create_task(batcher.submit([x])) for x in range(3)]
    batcher.start()  # [0, 1] goes to one slot, 2 starts gathering in the other
    await handler.started.wait()
    await settle()
    assert batcher.batches_in_flight == 0 and batcher.is_waiting
    await batcher.stop()
    assert [r.outputs for r in await asyncio.gather(*tasks)] == [[0], [10], [20]]
    assert handler.batches == [[0, 1], [2]]
    assert handler.threads[0] == 1


async def test_batcher_splits_at_max_batch_size_and_keeps_request_order() -> None:
    handler = HeldHandler()
    batcher = Batcher(handler, config(max_batch_size=3))
    batcher.start()
    first = asyncio.create_task(batcher.submit([0]))
    await handler.started.wait()
    rest = [asyncio.create_task(batcher.submit([x, x])) for x in (1, 2, 3)]
    await settle()
    handler.release.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    assert handler.batches == [[0], [1, 1], [2, 2], [3, 3]]
    assert results[2].outputs == [20, 20]


async def test_batcher_runs_a_request_larger_than_max_batch_size_alone() -> None:
    handler = HeldHandler(hold=0)
    batcher = Batcher(handler, config(max_batch_size=2))
    batcher.start()
    result = await batcher.submit([1, 2, 3])
    await batcher.stop()
    assert result.outputs == [10, 20, 30]
    assert handler.batches == [[1, 2, 3]]


async def test_batcher_dispatches_a_preferred_size_without_waiting_for_the_delay() -> None:
    handler = HeldHandler()
    # A one-hour delay: reaching the preferred size is the only way the batch can go.
    batcher = Batcher(handler, config(max_queue_delay_ms=3_600_000.0, preferred_batch_sizes=[2]))
    batcher.start()
    first = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.wait_for(handler.started.wait(), timeout=10)
    handler.release.set()
    assert (await first).outputs == [10, 20]
    await batcher.stop()


async def test_batcher_fails_every_request_of_a_batch_whose_handler_raises() -> None:
    gate = asyncio.Event()

    async def broken(inputs: list[Any]) -> Sequence[Any]:
        await gate.wait()
        raise ValueError("engine exploded")

    batcher = Batcher(broken, config())
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit([x])) for x in range(3)]
    await settle()
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.stop()
    assert all(isinstance(r, ValueError) and "exploded" in str(r) for r in results)


async def test_batcher_fails_a_batch_whose_output_count_differs_from_its_inputs() -> None:
    async def short(inputs: list[Any]) -> Sequence[Any]:
        return inputs[:-1]

    batcher = Batcher(short, config())
    batcher.start()
    with pytest.raises(BatchOutputError, match="returned 1 outputs for 2 inputs"):
        await batcher.submit([1, 2])
    await batcher.stop()


async def test_batcher_refuses_requests_beyond_the_queue_bound_with_a_retry_hint() -> None:
    handler = HeldHandler()
    batcher = Batcher(handler, config(max_queue_size=2))
    batcher.start()
    first = asyncio.create_task(batcher.submit([1]))
    await handler.started.wait()
    queued = [asyncio.create_task(batcher.submit([x])) for x in (2, 3)]
    await settle()
    with pytest.raises(QueueFullError) as info:
        await batcher.submit([4])
    assert info.value.retry_after_s >= 1.0
    handler.release.set()
    await asyncio.gather(first, *queued)
    await batcher.stop()


async def test_batcher_fails_a_request_whose_deadline_passes_in_the_queue() -> None:
    handler = HeldHandler()
    batcher = Batcher(handler, config())
    batcher.start()
    first = asyncio.create_task(batcher.submit([1]))
    await handler.started.wait()
    late = asyncio.create_task(batcher.submit([2], deadline=batcher.clock() - 1.0))
    with pytest.raises(DeadlineExceededError):
        await late
    handler.release.set()
    await first
    await batcher.stop()
    assert handler.batches == [[1]]


async def test_batcher_stop_finishes_queued_requests_and_then_refuses_new_ones() -> None:
    handler = HeldHandler()
    batcher = Batcher(handler, config(max_batch_size=1))
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit([x])) for x in (1, 2, 3)]
    await handler.started.wait()
    stopping = asyncio.create_task(batcher.stop())
    await settle()
    with pytest.raises(BatcherStoppedError):
        await batcher.submit([4])
    handler.release.set()
    await stopping
    assert [r.outputs for r in await asyncio.gather(*tasks)] == [[10], [20], [30]]


async def test_batcher_stop_without_drain_fails_queued_requests() -> None:
    handler = HeldHandler()
    batcher = Batcher(handler, config(max_batch_size=1))
    batcher.start()
    first = asyncio.create_task(batcher.submit([1]))
    await handler.started.wait()
    queued = asyncio.create_task(batcher.submit([2]))
    await settle()
    stopping = asyncio.create_task(batcher.stop(drain=False))
    with pytest.raises(BatcherStoppedError):
        await queued
    handler.release.set()
    await stopping
    assert (await first).outputs == [10]


def test_batcher_adaptive_delay_is_zero_at_light_load_and_grows_under_load() -> None:
    now = [0.0]
    batcher = Batcher(
        HeldHandler(), config(max_queue_delay_ms=10.0, adaptive=True), clock=lambda: now[0]
    )
    assert batcher.queue_delay_s(1) == 0.0  # nothing measured yet: do not wait
    for _ in range(5):  # one input every 100 ms: none would arrive within 10 ms
        now[0] += 0.1
        batcher._note_arrival(now[0], 1)
    assert batcher.queue_delay_s(1) == 0.0
    for _ in range(50):  # one input every 0.1 ms: waiting fills the batch
        now[0] += 0.0001
        batcher._note_arrival(now[0], 1)
    delay = batcher.queue_delay_s(1)
    assert 0.0 < delay <= 0.010
    assert delay == pytest.approx(7 * batcher._gap_ewma_s)


def test_batcher_fixed_delay_when_adaptive_is_off() -> None:
    batcher = Batcher(HeldHandler(), config(max_queue_delay_ms=4.0))
    assert batcher.queue_delay_s(1) == pytest.approx(0.004)


def test_batching_config_rejects_a_preferred_size_above_the_maximum() -> None:
    with pytest.raises(ValueError, match="preferred_batch_sizes must lie in 1..max_batch_size=4"):
        BatchingConfig(max_batch_size=4, preferred_batch_sizes=[8])
