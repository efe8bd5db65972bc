"""Dynamic batching: many concurrent requests, one model call.

Modelled on Ray Serve's ``serve/batching.py`` and Triton's dynamic batcher: one queue, one future
per request, one background task started and stopped with the server's lifespan. The task takes
the first waiting request, gathers more until the batch is full, a preferred size is reached or
the queue delay runs out, and hands the batch to the handler. While a batch computes, new requests
queue up, so under load batches grow by themselves; the delay only matters at light load, where
the adaptive policy shortens it to zero when no other request is expected in time.

Every batch's outputs are counted against its inputs, and every request of a failed batch gets
the batch's error. Requests carry a deadline (``time.monotonic()``): one that expires in the queue
is failed without being computed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.serve.config import BatchingConfig

logger = logging.getLogger(__name__)

Handler = Callable[[list[Any]], Awaitable[Sequence[Any]]]

# Weight of the newest sample in the moving averages of arrival gap and batch latency.
_EWMA_ALPHA = 0.2


class QueueFullError(Exception):
    """The model's queue holds ``max_queue_size`` requests; the client should retry later."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(Exception):
    """A request's deadline passed before its result was ready."""


class BatcherStoppedError(Exception):
    """The batcher is stopping (shutdown or unload) and takes no new requests."""


class BatchOutputError(RuntimeError):
    """The handler returned a different number of outputs than it was given inputs."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's share of a batch and how long it took."""

    outputs: list[Any]  # one output per input of the request, in order
    queue_s: float  # from submit to the start of the batch's computation
    compute_s: float  # the batch's handler time
    batch_size: int  # inputs in the whole batch


@dataclass(slots=True)
class _Pending:
    inputs: list[Any]
    future: asyncio.Future[BatchResult]
    enqueued_at: float
    deadline: float | None


_STOP = object()


class Batcher:
    """Groups requests to one handler into batches; ``start()`` and ``stop()`` bracket its life."""

    def __init__(
        self,
        handler: Handler,
        config: BatchingConfig,
        *,
        name: str = "model",
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.handler = handler
        self.on_batch = on_batch  # called with (inputs, compute seconds) after each good batch
        self.config = config
        self.name = name
        self.clock = clock
        self._queue: collections.deque[Any] = collections.deque()
        self._wakeup = asyncio.Event()
        # The repository resolves "one per core"; a batcher built directly runs one at a time.
        self._concurrency = config.max_concurrent_batches or 1
        self._slots = asyncio.Semaphore(self._concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._is_closed = False
        self._has_seen_stop = False
        self._carry: _Pending | None = None
        self._is_gathering = False  # a batch is being gathered (waiting out its queue delay)
        self._last_arrival: float | None = None
        self._gap_ewma_s: float | None = None
        self._compute_ewma_s: float | None = None

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not yet in a batch)."""
        waiting = sum(1 for item in self._queue if item is not _STOP)
        return waiting + (1 if self._carry is not None else 0)

    @property
    def batches_in_flight(self) -> int:
        """Batches handed to the handler and not yet finished."""
        return len(self._running)

    @property
    def is_waiting(self) -> bool:
        """Whether requests wait for a batch: queued, or being gathered into the next one."""
        # Asked for every batch: stops at the first waiting request instead of counting them all.
        return (
            self._is_gathering
            or self._carry is not None
            or any(item is not _STOP for item in self._queue)
        )

    @property
    def is_running(self) -> bool:
        """Whether the background task is alive and new requests are accepted."""
        return self._task is not None and not self._task.done() and not self._is_closed

    def start(self) -> None:
        """Start the background task on the running event loop."""
        if self._task is not None:
            raise RuntimeError(f"batcher {self.name} already started")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"batcher-{self.name}"
        )

    async def stop(self, *, drain: bool = True) -> None:
        """Refuse new requests; finish queued ones (``drain``) or fail them; wait for the task."""
        self._is_closed = True
        if not drain:
            self._fail_queued(BatcherStoppedError(f"model {self.name} is shutting down"))
        self._queue.append(_STOP)
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, inputs: Sequence[Any], *, deadline: float | None = None) -> BatchResult:
        """Queue one request's inputs and wait for their outputs.

        Raises:
            QueueFullError: the queue is full.
            BatcherStoppedError: the batcher is stopping.
            DeadlineExceededError: ``deadline`` (on ``clock``) passed first.
            Exception: whatever the handler raised for the request's batch.
        """
        if self._is_closed or self._task is None:
            raise BatcherStoppedError(f"model {self.name} is not accepting requests")
        if self.is_full:
            raise self.queue_full_error()
        now = self.clock()
        self._note_arrival(now, len(inputs))
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(inputs), future, now, deadline))
        self._wakeup.set()
        if deadline is None:
            return await future
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                return await future
        except TimeoutError:
            raise DeadlineExceededError(f"model {self.name}: deadline exceeded") from None

    @property
    def is_full(self) -> bool:
        """Whether a new request would be refused for lack of room in the queue."""
        return self.depth >= self.config.max_queue_size

    def queue_full_error(self) -> QueueFullError:
        """The error a refused request gets: what is full and when to retry."""
        return QueueFullError(
            f"model {self.name}: queue full ({self.config.max_queue_size} requests waiting)",
            retry_after_s=self.retry_after_s(),
        )

    def retry_after_s(self) -> float:
        """Seconds a refused client should wait: about the time to work off the queue."""
        per_batch = self._compute_ewma_s or 0.05
        batches = max(1.0, self.depth / self.config.max_batch_size)
        return max(1.0, per_batch * batches / self._concurrency)

    def queue_delay_s(self, size: int) -> float:
        """How long a batch of ``size`` inputs waits for more before it is dispatched.

        Fixed at ``max_queue_delay_ms`` unless adaptive; adaptive, it is zero when the arrival
        rate says no other input will come within the maximum delay (light load: low latency),
        otherwise the time to fill the batch at that rate, capped by the maximum delay and by
        the measured batch latency (waiting longer than a batch takes loses more than it gains).
        """
        max_delay = self.config.max_queue_delay_ms / 1000.0
        if not self.config.adaptive or max_delay == 0.0:
            return max_delay
        if self._gap_ewma_s is None or self._gap_ewma_s <= 0.0:
            return 0.0
        rate = 1.0 / self._gap_ewma_s  # inputs per second
        if rate * max_delay < 1.0:
            return 0.0
        fill_s = (self.config.max_batch_size - size) / rate
        cap = max_delay if self._compute_ewma_s is None else min(max_delay, self._compute_ewma_s)
        return max(0.0, min(fill_s, cap))

    def _note_arrival(self, now: float, count: int) -> None:
        if self._last_arrival is not None:
            gap = (now - self._last_arrival) / max(1, count)
            prev = self._gap_ewma_s
            self._gap_ewma_s = gap if prev is None else prev + _EWMA_ALPHA * (gap - prev)
        self._last_arrival = now

    async def _run(self) -> None:
        while True:
            # Wait for a free slot before forming a batch, so that requests arriving while the
            # model is busy queue up and join the next batch.
            await self._slots.acquire()
            batch = await self._next_batch()
            if batch is None:
                self._slots.release()
                break
            live = self._drop_expired(batch)
            if not live:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Pending] | None:
        """The next batch to compute, or None once the stop marker is reached."""
        first = self._carry
        self._carry = None
        if first is None:
            if self._has_seen_stop:
                return None
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self._queue.popleft()
            if item is _STOP:
                return None
            first = item
        batch = [first]
        limit = self._share(len(first.inputs))
        size = self._gather_ready(batch, len(first.inputs), limit)
        if not self._has_seen_stop and not self._is_dispatchable(size, limit):
            self._is_gathering = True
            try:
                await self._gather_until(batch, size, self.queue_delay_s(size), limit)
            finally:
                self._is_gathering = False
        return batch

    def _share(self, first_size: int) -> int:
        """The batch size to aim for: the queue split over the slots that are free now.

        With one batch in flight per core, a closed loop of fewer clients than
        ``max_batch_size`` would otherwise queue up behind one batch while the other cores
        idle; split, the waiting inputs run side by side and at light load nothing waits.
        """
        free_others = self._concurrency - len(self._running) - 1
        if free_others <= 0:
            return self.config.max_batch_size
        queued = first_size + sum(len(item.inputs) for item in self._queue if item is not _STOP)
        return max(1, min(self.config.max_batch_size, math.ceil(queued / (free_others + 1))))

    def _gather_ready(self, batch: list[_Pending], size: int, limit: int | None = None) -> int:
        """Move already-queued requests into ``batch`` until it holds ``limit`` inputs."""
        limit = limit or self.config.max_batch_size
        while self._queue and size < limit and self._carry is None:
            item = self._queue[0]
            if item is _STOP:
                self._queue.popleft()
                self._has_seen_stop = True
                break
            if size + len(item.inputs) > self.config.max_batch_size:
                self._carry = self._queue.popleft()
                break
            batch.append(self._queue.popleft())
            size += len(item.inputs)
        return size

    async def _gather_until(self, batch: list[_Pending], size: int, delay_s: float, limit: int) -> int:
        end = self.clock() + delay_s
        while self._carry is None and not self._has_seen_stop and not self._is_dispatchable(size, limit):
            remaining = end - self.clock()
            if remaining <= 0.0:
                break
            if not self._queue:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wakeup.wait()
            size = self._gather_ready(batch, size, limit)
        return size

    def _is_dispatchable(self, size: int, limit: int) -> bool:
        if size >= limit:
            return True
        return size in self.config.preferred_batch_sizes and not self._queue

    def _drop_expired(self, batch: list[_Pending]) -> list[_Pending]:
        now = self.clock()
        live = []
        for pending in batch:
            if pending.future.done():  # the client gave up (deadline or disconnect)
                continue
            if pending.deadline is not None and pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceededError(f"model {self.name}: deadline exceeded in the queue")
                )
                continue
            live.append(pending)
        return live

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            flat = [x for pending in batch for x in pending.inputs]
            start = self.clock()
            try:
                outputs = await self.handler(flat)
                if len(outputs) != len(flat):
                    raise BatchOutputError(
                        f"model {self.name} returned {len(outputs)} outputs for {len(flat)} inputs"
                    )
            except Exception as exc:  # every request of the batch is told why
                logger.warning("batch of %s inputs for %s failed: %s", len(flat), self.name, exc)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                return
            compute_s = self.clock() - start
            prev = self._compute_ewma_s
            self._compute_ewma_s = (
                compute_s if prev is None else prev + _EWMA_ALPHA * (compute_s - prev)
            )
            if self.on_batch is not None:
                self.on_batch(len(flat), compute_s)
            offset = 0
            for pending in batch:
                n = len(pending.inputs)
                if not pending.future.done():
                    pending.future.set_result(
                        BatchResult(
                            outputs=list(outputs[offset : offset + n]),
                            queue_s=start - pending.enqueued_at,
                            compute_s=compute_s,
                            batch_size=len(flat),
                        )
                    )
                offset += n
        finally:
            self._slots.release()

    def _fail_queued(self, exc: Exception) -> None:
        pending_items = [self._carry] if self._carry is not None else []
        self._carry = None
        pending_items += [item for item in self._queue if item is not _STOP]
        self._queue.clear()
        for pending in pending_items:
            if not pending.future.done():
                pending.future.set_exception(exc)
