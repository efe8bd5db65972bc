"""The continuous-batching engine on a tiny Llama: scheduling rules, budget, fairness, failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiln.runtime import Generator, load_generator
from kiln.runtime.preprocessing import InputError
from kiln.serve.batching import QueueFullError
from kiln.serve.config import GenerationServingConfig
from kiln.serve.generation.engine import Finished, GenerationEngine, GenerationFailedError, Piece
from tests.helpers import tiny_generation_package


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return load_generator(tiny_generation_package(tmp_path_factory.mktemp("engine") / "lm", context_length=128))


class Rounds:
    """Records, per scheduling round, how many tokens each sequence had; holds rounds on request."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.log: list[dict[int, int]] = []
        self.release = threading.Event()
        self.release.set()
        original = engine._iterate

        def recorded() -> None:
            self.release.wait(timeout=60)
            original()
            tokens = {s.id: s.stream.new_tokens for s in engine._running.values()}
            tokens.update({s.id: -s.prefill.done for s in engine._prefilling if s.prefill})
            self.log.append(tokens)

        engine._iterate = recorded  # type: ignore[method-assign]


def run(generator: Generator, config: GenerationServingConfig, body: Callable[[GenerationEngine], Any]) -> Any:
    async def main() -> Any:
        engine = GenerationEngine(generator, config)
        engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_engine_answers_equal_generate_for_prompts_joining_and_leaving(generator: Generator) -> None:
    prompts = ["a", "the dog ran in the park; the sun", "café au", "question: what is", "the cat sat on the mat"]
    lengths = [5, 20, 9, 14, 3]

    async def body(engine: GenerationEngine) -> list[Finished]:
        handles = [engine.submit(generator.prepare(p, max_new_tokens=n)) for p, n in zip(prompts, lengths, strict=True)]
        return list(await asyncio.gather(*(h.result() for h in handles)))

    config = GenerationServingConfig(max_sequences=3, prefill_chunk_tokens=4)
    results = run(generator, config, body)
    alone = [generator.generate([p], max_new_tokens=n)[0] for p, n in zip(prompts, lengths, strict=True)]
    assert [r.text for r in results] == [a.text for a in alone]
    assert [r.completion_tokens for r in results] == lengths


def test_engine_long_prompt_prefills_in_chunks_while_others_decode(generator: Generator) -> None:
    long_prompt = "the cat sat on the mat and looked at the door " * 4

    async def body(engine: GenerationEngine) -> list[dict[int, int]]:
        rounds = Rounds(engine)
        short = engine.submit(generator.prepare("a", max_new_tokens=40))
        while not any(rounds.log):
            await asyncio.sleep(0)
        rounds.release.clear()
        long = engine.submit(generator.prepare(long_prompt, max_new_tokens=4))
        rounds.release.set()
        await asyncio.gather(short.result(), long.result())
        return rounds.log

    log = run(generator, GenerationServingConfig(prefill_chunk_tokens=8), body)
    long_id = 2
    prefilling = [r for r in log if r.get(long_id, 0) < 0]
    n_tokens = len(generator.tokenizer.encode(long_prompt).ids)
    assert len(prefilling) == -(-n_tokens // 8) - 1  # every chunk but the last leaves it prefilling
    # The short sequence gained one token in every round the long prompt spent prefilling.
    gains = [b[1] - a[1] for a, b in zip(log, log[1:], strict=False) if b.get(long_id, 0) < 0]
    assert gains and all(g == 1 for g in gains)


def test_engine_makes_requests_wait_past_the_kv_budget(generator: Generator) -> None:
    async def body(engine: GenerationEngine) -> tuple[int, int]:
        first = engine.submit(generator.prepare("a", max_new_tokens=10))
        second = engine.submit(generator.prepare("a", max_new_tokens=10))
        async for event in first.pieces():
            if isinstance(event, Piece):
                break
        seen = (engine.running, engine.waiting)
        await first.result()
        await second.result()
        return seen

    one_fits = GenerationServingConfig(kv_cache_tokens=15)
    assert run(generator, one_fits, body) == (1, 1)


def test_engine_refuses_a_sequence_larger_than_the_budget_and_past_the_waiting_bound(generator: Generator) -> None:
    async def body(engine: GenerationEngine) -> None:
        with pytest.raises(InputError, match="max_tokens: .* more than the 15"):
            engine.submit(generator.prepare("the cat sat", max_new_tokens=20))
        rounds = Rounds(engine)
        rounds.release.clear()
        handles = [engine.submit(generator.prepare("a", max_new_tokens=2)) for _ in range(2)]
        with pytest.raises(QueueFullError) as err:
            engine.submit(generator.prepare("a", max_new_tokens=2))
        assert err.value.retry_after_s >= 1
        for handle in handles:
            handle.cancel()
        rounds.release.set()

    run(generator, GenerationServingConfig(kv_cache_tokens=15, max_waiting=2), body)


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_engine_tells_every_sequence_when_the_model_fails_and_goes_on(generator: Generator, where: str) -> None:
    async def body(engine: GenerationEngine) -> str:
        def broken(*args: Any) -> Any:
            raise RuntimeError("boom")

        if where == "decode":
            engine._batch.step = broken  # type: ignore[method-assign]
        else:
            original = engine._sample
            engine._sample = broken  # type: ignore[method-assign]
        handle = engine.submit(generator.prepare("a", max_new_tokens=5))
        with pytest.raises(GenerationFailedError, match="boom"):
            await handle.result()
        assert engine.reserved_tokens == 0
        if where == "prefill":
            engine._sample = original  # type: ignore[method-assign]
        again = await engine.submit(generator.prepare("a", max_new_tokens=3)).result()
        return again.finish_reason

    assert run(generator, GenerationServingConfig(), body) == "length"


def test_engine_stop_without_drain_fails_running_sequences(generator: Generator) -> None:
    async def main() -> None:
        engine = GenerationEngine(generator, GenerationServingConfig())
        engine.start()
        rounds = Rounds(engine)
        rounds.release.clear()
        handle = engine.submit(generator.prepare("a", max_new_tokens=20))
        stopping = asyncio.ensure_future(engine.stop(drain=False))
        await asyncio.sleep(0)  # stop() has set its flags and waits for the worker
        rounds.release.set()  # one round runs, then the worker stops
        with pytest.raises(GenerationFailedError, match="shutting down"):
            await handle.result()
        await stopping
        assert engine.running == 0 and engine.reserved_tokens == 0

    asyncio.run(main())


def test_serving_config_refuses_out_of_range_generation_settings(tmp_path: Path) -> None:
    from kiln.errors import ConfigError

    with pytest.raises(ConfigError, match="max_sequences"):
        GenerationServingConfig.parse({"max_sequences": 0}, source="serve.yaml")


class ManualClock:
    """The engine's clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_engine_stops_sequences_at_their_deadline_running_or_waiting(generator: Generator) -> None:
    clock = ManualClock()

    async def main() -> tuple[list[str], Finished, Finished, int]:
        engine = GenerationEngine(generator, GenerationServingConfig(max_sequences=1), clock=clock)
        engine.start()
        try:
            running = engine.submit(generator.prepare("a", max_new_tokens=50), deadline=clock.now + 1.0)
            waiting = engine.submit(generator.prepare("the cat", max_new_tokens=5), deadline=clock.now + 1.0)
            pieces: list[str] = []
            async for event in running.pieces():
                if isinstance(event, Piece):
                    pieces.append(event.text)
                    if len(pieces) == 3:
                        clock.now += 2.0  # both deadlines pass: the next round stops both
                else:
                    ended = event
            return pieces, ended, await waiting.result(), engine.reserved_tokens
        finally:
            await engine.stop()

    pieces, ended, waited, reserved = asyncio.run(main())
    assert ended.finish_reason == "timeout" and 3 <= ended.completion_tokens < 50
    assert ended.text.startswith("".join(pieces)) and ended.ttft_s == 0.0
    assert waited.finish_reason == "timeout" and waited.completion_tokens == 0 and waited.ttft_s is None
    assert reserved == 0


def test_engine_ends_a_cancelled_sequence_with_its_text_so_far(generator: Generator) -> None:
    async def body(engine: GenerationEngine) -> tuple[Finished, str, int]:
        handle = engine.submit(generator.prepare("a", max_new_tokens=80))
        ended: list[Finished] = []
        is_ended = asyncio.Event()
        handle.on_end = lambda finished: (ended.append(finished), is_ended.set())  # type: ignore[func-returns-value]
        first = await handle.events.get()
        assert isinstance(first, Piece)
        handle.cancel()
        await asyncio.wait_for(is_ended.wait(), timeout=60)
        return ended[0], first.text, engine.reserved_tokens

    ended, first, reserved = run(generator, GenerationServingConfig(), body)
    assert ended.finish_reason == "cancelled" and ended.text.startswith(first)
    assert 1 <= ended.completion_tokens < 80 and reserved == 0
