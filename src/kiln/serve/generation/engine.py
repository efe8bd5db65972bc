"""Continuous batching of one text-generation version (iteration-level scheduling, as in Orca,
Yu et al. OSDI 2022, and vLLM).

One worker thread owns the model. Each iteration it ends cancelled sequences and those past
their deadline (``finish_reason`` "cancelled" / "timeout", the text so far kept), admits waiting
ones while there is a free slot (``max_sequences``) and KV-cache budget (``kv_cache_tokens``,
each sequence reserving its prompt plus ``max_tokens``), feeds one chunk of at most
``prefill_chunk_tokens`` prompt tokens of the oldest admitted sequence into its own cache, and
then runs one decode step of every running sequence together (``kiln.runtime.kv_batch``). A
sequence whose prefill is done joins the batch at once; one that finishes or is cancelled leaves
before the next step and frees its reservation. Fairness rule: prefill advances by one chunk per
decode step, so a long prompt delays running sequences by one chunk's forward at most, and
prompts start in arrival order (first come, first served; a request waits for budget rather
than being overtaken).

Text pieces go to asyncio through ``loop.call_soon_threadsafe``, once per iteration for all
sequences. ``start()`` and ``stop()`` bracket the engine's life like the batcher's; ``stop``
finishes running and waiting sequences (``drain``) or fails them. What one sequence does with a
token, and its events, live in ``kiln.serve.generation.sequences``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from kiln.runtime.kv_batch import KVBatch, Prefill
from kiln.runtime.preprocessing import InputError
from kiln.serve.batching import BatcherStoppedError, QueueFullError
from kiln.serve.config import GenerationServingConfig
from kiln.serve.generation.sequences import (
    ActiveSequence,
    EndReason,
    Event,
    Failed,
    Finished,
    Piece,
    sample_tokens,
)

if TYPE_CHECKING:
    from kiln.runtime.generation import Generator, PreparedPrompt

__all__ = ["EngineHooks", "Failed", "Finished", "GenerationEngine", "GenerationFailedError", "Piece", "SequenceHandle"]

logger = logging.getLogger(__name__)


class GenerationFailedError(RuntimeError):
    """The model failed while a sequence was generating."""


class EngineHooks:
    """Where the engine reports timings and counts (no-ops; the server's metrics override them)."""

    def first_token(self, ttft_s: float) -> None:
        """A sequence's first token, ``ttft_s`` after it was submitted."""

    def next_token(self, gap_s: float) -> None:
        """A later token, ``gap_s`` after the one before."""

    def finished(self, *, duration_s: float, prompt_tokens: int, completion_tokens: int) -> None:
        """A sequence ended (finished, cancelled or past its deadline)."""

    def decode_step(self, batch_size: int) -> None:
        """One decode step ran ``batch_size`` sequences together."""

    def cancelled(self) -> None:
        """A sequence was cancelled before it finished (its client went away)."""

    def timed_out(self) -> None:
        """A sequence passed its deadline before it finished."""


class SequenceHandle:
    """The caller's side of one submitted sequence: its events, and a way to cancel it."""

    def __init__(self, engine: GenerationEngine, sequence_id: int) -> None:
        self.id = sequence_id
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._engine = engine
        self.is_done = False
        # Called on the event loop with the sequence's end, whether or not anyone still reads
        # its events (a cancelled sequence ends too): the prediction log's way in.
        self.on_end: Callable[[Finished], None] | None = None

    async def pieces(self) -> AsyncIterator[Piece | Finished]:
        """The text pieces, then the ``Finished`` event.

        Raises:
            GenerationFailedError: the model failed.
        """
        while True:
            event = await self.events.get()
            if isinstance(event, Failed):
                self.is_done = True
                raise GenerationFailedError(event.message)
            yield event
            if isinstance(event, Finished):
                self.is_done = True
                return

    async def result(self) -> Finished:
        """Wait for the whole answer."""
        async for event in self.pieces():
            if isinstance(event, Finished):
                return event
        raise GenerationFailedError("the sequence ended without finishing")

    def cancel(self) -> None:
        """Stop generating (the client went away); the slot frees before the next step."""
        if not self.is_done:
            self.is_done = True
            self._engine.hooks.cancelled()
            self._engine.cancel(self.id)


class GenerationEngine:
    """Runs every sequence of one text-generation version through one decode loop."""

    def __init__(
        self,
        generator: Generator,
        config: GenerationServingConfig,
        *,
        name: str = "model",
        hooks: EngineHooks | None = None,
        num_threads: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.generator = generator
        self.num_threads = num_threads  # intra-op threads of the worker thread (OpenMP counts per thread)
        self.config = config
        self.name = name
        self.hooks = hooks or EngineHooks()
        self.clock = clock
        self.eos_ids = frozenset({generator.eos_id})
        self._lock = threading.Condition()
        self._waiting: collections.deque[ActiveSequence] = collections.deque()  # guarded by _lock
        self._cancelled: set[int] = set()  # guarded by _lock
        self._handles: dict[int, SequenceHandle] = {}  # touched on the event loop only
        self._ids = itertools.count(1)
        self._prefilling: collections.deque[ActiveSequence] = collections.deque()
        self._running: dict[int, ActiveSequence] = {}
        self._admitted: dict[int, ActiveSequence] = {}  # prefilling or running: what a failure must fail
        self._batch = KVBatch(generator.model)
        self._reserved = 0
        self._is_stopping = False
        self._is_draining = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._duration_ewma_s = 1.0

    @property
    def running(self) -> int:
        """Sequences admitted: prefilling or decoding."""
        return len(self._running) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        """Sequences waiting for a slot or KV-cache budget."""
        return len(self._waiting)

    @property
    def reserved_tokens(self) -> int:
        """KV-cache tokens reserved by admitted sequences (prompt + max_tokens each)."""
        return self._reserved

    @property
    def cache_cells(self) -> int:
        """Token slots the decode batch's cache holds now, left padding included."""
        return self._batch.cache_cells

    @property
    def is_full(self) -> bool:
        """Whether a new request would be refused for lack of room in the waiting queue."""
        return self.waiting >= self.config.max_waiting

    def start(self) -> None:
        """Start the worker thread; events are delivered on the running event loop."""
        if self._thread is not None:
            raise RuntimeError(f"generation engine {self.name} already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"kiln-generate-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self, *, drain: bool = True) -> None:
        """Refuse new sequences; finish admitted and waiting ones (``drain``) or fail them."""
        with self._lock:
            self._is_stopping = True
            self._is_draining = drain
            self._lock.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def submit(self, prepared: PreparedPrompt, *, deadline: float | None = None) -> SequenceHandle:
        """Queue a prepared prompt; its events arrive on the returned handle (call on the loop).

        A sequence still waiting or generating at ``deadline`` (on the engine's clock) ends
        before the next step with ``finish_reason`` "timeout" and frees its slot.

        Raises:
            InputError: the sequence needs more KV-cache tokens than the whole budget.
            QueueFullError: ``max_waiting`` requests wait already.
            BatcherStoppedError: the engine is stopping.
        """
        if self._thread is None or self._is_stopping:
            raise BatcherStoppedError(f"model {self.name} is not accepting requests")
        need = len(prepared.token_ids) + prepared.config.max_new_tokens
        if need > self.config.kv_cache_tokens:
            raise InputError(
                f"max_tokens: the prompt ({len(prepared.token_ids)} tokens) plus max_tokens "
                f"({prepared.config.max_new_tokens}) needs {need} KV-cache tokens, more than the "
                f"{self.config.kv_cache_tokens} this model is served with"
            )
        sequence = ActiveSequence(
            next(self._ids), prepared, self.generator, submitted_at=self.clock(), deadline=deadline
        )
        handle = SequenceHandle(self, sequence.id)
        with self._lock:
            if len(self._waiting) >= self.config.max_waiting:
                raise self.queue_full_error()
            self._waiting.append(sequence)
            self._handles[sequence.id] = handle
            self._lock.notify()
        return handle

    def queue_full_error(self) -> QueueFullError:
        """The error a refused request gets: what is full and when to retry."""
        rounds = max(1.0, self.waiting / self.config.max_sequences)
        return QueueFullError(
            f"model {self.name}: {self.waiting} requests wait for a sequence slot (max_waiting "
            f"{self.config.max_waiting})",
            retry_after_s=max(1.0, rounds * self._duration_ewma_s),
        )

    def cancel(self, sequence_id: int) -> None:
        """Drop a sequence before the next step (call on the event loop)."""
        with self._lock:
            self._cancelled.add(sequence_id)
            self._lock.notify()

    # The worker thread.

    def _work(self) -> None:
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)
        while True:
            with self._lock:
                while not self._has_work() and not self._is_stopping:
                    self._lock.wait()
                if self._is_stopping and (not self._is_draining or not self._has_work()):
                    break
            try:
                self._iterate()
            except Exception as exc:  # every sequence in flight is told why; the engine goes on
                logger.exception("generation step of %s failed", self.name)
                self._fail_admitted(f"model {self.name} failed: {exc}")
        self._fail_admitted(f"model {self.name} is shutting down")
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        self._deliver([(s.id, Failed(f"model {self.name} is shutting down")) for s in waiting])

    def _has_work(self) -> bool:
        return bool(self._waiting or self._cancelled or self._prefilling or self._running)

    def _iterate(self) -> None:
        """One scheduling round: drop cancelled and expired, admit, one prefill chunk, one decode step."""
        events: list[tuple[int, Event]] = []
        self._drop_ended(events)
        self._admit()
        if self._prefilling:
            self._prefill_chunk(events)
        if self._running:
            self._decode_step(events)
        self._deliver(events)

    def _drop_ended(self, events: list[tuple[int, Event]]) -> None:
        """End the sequences cancelled since the last round and those past their deadline."""
        now = self.clock()
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            ends: dict[int, EndReason] = {sid: "cancelled" for sid in cancelled}
            for sequence in [*self._waiting, *self._prefilling, *self._running.values()]:
                if sequence.id not in ends and sequence.deadline is not None and now >= sequence.deadline:
                    ends[sequence.id] = "timeout"
            if not ends:
                return
            dropped = [s for s in self._waiting if s.id in ends]
            self._waiting = collections.deque(s for s in self._waiting if s.id not in ends)
        dropped += [s for s in self._prefilling if s.id in ends]
        self._prefilling = collections.deque(s for s in self._prefilling if s.id not in ends)
        gone = [sid for sid in self._running if sid in ends]
        self._batch.leave(gone)
        dropped += [self._running.pop(sid) for sid in gone]
        for sequence in dropped:
            if ends[sequence.id] == "timeout":
                self.hooks.timed_out()
            self._release(sequence, now)
            events.append((sequence.id, sequence.end(now, ends[sequence.id])))

    def _admit(self) -> None:
        with self._lock:
            while self._waiting and self.running < self.config.max_sequences:
                head = self._waiting[0]
                if self._reserved + head.reserved > self.config.kv_cache_tokens:
                    break
                self._waiting.popleft()
                self._reserved += head.reserved
                self._admitted[head.id] = head
                head.prefill = Prefill(self.generator.model, head.prepared.token_ids)
                self._prefilling.append(head)

    def _prefill_chunk(self, events: list[tuple[int, Event]]) -> None:
        sequence = self._prefilling[0]
        assert sequence.prefill is not None
        sequence.prefill.run_chunk(self.config.prefill_chunk_tokens)
        if not sequence.prefill.is_done:
            return
        self._prefilling.popleft()
        assert sequence.prefill.logits is not None
        [token] = self._sample([sequence], sequence.prefill.logits)
        if self._take(sequence, token, events):
            self._release(sequence, self.clock())
            return
        self._batch.join(sequence.id, sequence.prefill)
        sequence.prefill = None
        self._running[sequence.id] = sequence

    def _decode_step(self, events: list[tuple[int, Event]]) -> None:
        rows = [self._running[sid] for sid in self._batch.keys]
        self.hooks.decode_step(len(rows))
        logits = self._batch.step([s.next_token for s in rows])
        tokens = self._sample(rows, logits)
        finished = [s for s, token in zip(rows, tokens, strict=True) if self._take(s, token, events)]
        if finished:
            self._batch.leave([s.id for s in finished])
            now = self.clock()
            for sequence in finished:
                self._release(self._running.pop(sequence.id), now)

    _sample = staticmethod(sample_tokens)  # one token per row, each by its own settings

    def _take(self, sequence: ActiveSequence, token: int, events: list[tuple[int, Event]]) -> bool:
        """Add a generated token to its sequence's text; return whether the sequence finished."""
        now = self.clock()
        if sequence.last_token_at is None:
            sequence.first_token_at = now
            self.hooks.first_token(now - sequence.submitted_at)
        else:
            self.hooks.next_token(now - sequence.last_token_at)
        sequence.last_token_at = now
        piece, is_finished = sequence.take(token, self.eos_ids)
        if piece:
            events.append((sequence.id, Piece(piece)))
        if is_finished:
            events.append((sequence.id, sequence.end(now)))
        return is_finished

    def _release(self, sequence: ActiveSequence, now: float) -> None:
        if self._admitted.pop(sequence.id, None) is None:
            return  # released already, or never admitted (it waited)
        self._reserved -= sequence.reserved
        sequence.prefill = None
        duration_s = now - sequence.submitted_at
        self._duration_ewma_s += 0.2 * (duration_s - self._duration_ewma_s)
        self.hooks.finished(
            duration_s=duration_s,
            prompt_tokens=len(sequence.prepared.token_ids),
            completion_tokens=sequence.stream.new_tokens,
        )

    def _fail_admitted(self, message: str) -> None:
        admitted = list(self._admitted.values())
        self._prefilling.clear()
        self._running.clear()
        self._batch = KVBatch(self.generator.model)
        now = self.clock()
        for sequence in admitted:
            self._release(sequence, now)
        self._deliver([(s.id, Failed(message)) for s in admitted])

    def _deliver(self, events: list[tuple[int, Event]]) -> None:
        if not events or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._hand_out, events)
        except RuntimeError:  # the event loop closed: nobody is listening any more
            logger.debug("generation events of %s dropped: the event loop is closed", self.name)

    def _hand_out(self, events: list[tuple[int, Event]]) -> None:
        """On the event loop: put each event in its sequence's queue."""
        for sequence_id, event in events:
            handle = self._handles.get(sequence_id)
            if handle is None:
                continue
            handle.events.put_nowait(event)
            if isinstance(event, Finished | Failed):
                del self._handles[sequence_id]
            if isinstance(event, Finished) and handle.on_end is not None:
                try:
                    handle.on_end(event)
                except Exception:  # a failing observer never fails the answer
                    logger.exception("end-of-sequence observer of %s failed", self.name)
