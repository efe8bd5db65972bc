"""How fast a text-generation package answers at batch 1: time to first token and time per output token.

Each run streams one greedy answer of ``lm.latency_new_tokens`` new tokens (fewer when the model
ends it) through ``Generator.stream``, the path a served request takes:

- TTFT: from the call until the first text piece arrives (prefill and the first decode step);
- TPOT: the time after the first piece over the tokens generated after the first;
- latency: the whole answer, TTFT plus the decoding after it;
- tokens/s: tokens generated over the time of all runs, prefill included.

Runs are timed after untimed warm-up runs (allocator, thread pools, lazy initialisation), on CPU
with the thread count asked for, which is restored afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.runtime.generation import Generator

log = logging.getLogger(__name__)

# Timed answers of `kiln eval --speed` on a text-generation package (each one many forward passes).
EVAL_LATENCY_RUNS = 20
WARMUP_RUNS = 2


def measure_decoding(
    generator: Generator,
    prompts: Sequence[Any],
    *,
    new_tokens: int,
    runs: int,
    warmup_runs: int = WARMUP_RUNS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """TTFT, TPOT and whole-answer latency percentiles and tokens/s of a loaded package at batch 1.

    Args:
        generator: the loaded package.
        prompts: strings or chat messages, cycled over the runs.
        new_tokens: most tokens per answer (cut to the context length less one).
        runs: timed answers.
        warmup_runs: untimed answers first.
        clock: a monotonic clock in seconds.

    Returns:
        ``{"ttft_ms": {...}, "tpot_ms": {...}, "latency_ms": {...}, "tokens_per_s", "new_tokens",
        "max_new_tokens"}``; each ``{...}`` holds p50, p95, p99, mean and runs.

    Raises:
        ValueError: no prompts, or fewer than one run.
        KilnError: every timed answer ended after its first token, so TPOT cannot be measured.
    """
    if not prompts:
        raise ValueError("prompts must hold at least one prompt")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    limit = min(new_tokens, generator.context_length - 1)
    if limit < new_tokens:
        log.info("latency runs generate %s tokens, the context length %s less one", limit, generator.context_length)
    for i in range(warmup_runs):
        _timed_answer(generator, prompts[i % len(prompts)], limit, clock)
    ttft, tpot, total, tokens = [], [], [], []
    for i in range(runs):
        first_s, whole_s, count = _timed_answer(generator, prompts[i % len(prompts)], limit, clock)
        ttft.append(first_s * 1000.0)
        total.append(whole_s * 1000.0)
        tokens.append(count)
        if count >= 2:
            tpot.append((whole_s - first_s) * 1000.0 / (count - 1))
    if not tpot:
        raise KilnError(
            f"{generator.path}: every timed answer ended after its first token, so the time per output "
            "token cannot be measured; time it on other prompts"
        )
    return {
        "ttft_ms": _percentiles(ttft),
        "tpot_ms": _percentiles(tpot),
        "latency_ms": _percentiles(total),
        "tokens_per_s": 1000.0 * sum(tokens) / sum(total),
        "new_tokens": float(np.mean(tokens)),
        "max_new_tokens": limit,
    }


def measure_generation_package(
    path: str | Path,
    prompts: Sequence[Any],
    *,
    num_threads: int | None = None,
    latency_runs: int = EVAL_LATENCY_RUNS,
    new_tokens: int | None = None,
) -> dict[str, Any]:
    """Load a text-generation package on CPU and time it (``measure_decoding``), with its size on
    disk and the growth of this process's peak memory.

    Args:
        path: the package folder.
        prompts: the timed prompts, strings or chat messages.
        num_threads: intra-op threads while timing; the library default if empty.
        latency_runs: timed answers.
        new_tokens: tokens per answer; the recipe's ``lm.latency_new_tokens`` if empty.
    """
    import torch

    from kiln.evaluate.generation import language_settings
    from kiln.evaluate.speed import peak_rss_bytes
    from kiln.runtime.generation import load_generator
    from kiln.runtime.measures import package_size_bytes

    threads = torch.get_num_threads()
    before = peak_rss_bytes()
    try:
        generator = load_generator(path, device="cpu", num_threads=num_threads)
        lm = language_settings(generator.manifest, Path(path))
        result = measure_decoding(generator, prompts, new_tokens=new_tokens or lm.latency_new_tokens, runs=latency_runs)
    finally:
        torch.set_num_threads(threads)  # loading with num_threads sets it for the whole process
    result["size_bytes"] = package_size_bytes(path)
    result["peak_rss_delta_bytes"] = peak_rss_bytes() - before
    return result


def time_generation_package(
    path: str | Path, prompts: Sequence[Any], *, num_threads: int | None = None, latency_runs: int = 100
) -> dict[str, float]:
    """The machine-dependent metrics a promotion rule may name, of a text-generation package.

    ``ttft_ms`` and ``tpot_ms`` are medians; ``p50/p95/p99_latency_ms`` time whole answers.
    """
    speed = measure_generation_package(path, prompts, num_threads=num_threads, latency_runs=latency_runs)
    return {
        "ttft_ms": speed["ttft_ms"]["p50"],
        "tpot_ms": speed["tpot_ms"]["p50"],
        "p50_latency_ms": speed["latency_ms"]["p50"],
        "p95_latency_ms": speed["latency_ms"]["p95"],
        "p99_latency_ms": speed["latency_ms"]["p99"],
        "tokens_per_s": speed["tokens_per_s"],
        "size_mb": speed["size_bytes"] / 1e6,
    }


def _timed_answer(
    generator: Generator, prompt: Any, new_tokens: int, clock: Callable[[], float]
) -> tuple[float, float, int]:
    """Seconds to the first piece, seconds to the end, and tokens generated, of one greedy answer."""
    start = clock()
    stream = generator.stream(prompt, max_new_tokens=new_tokens, temperature=0.0, stop=[])
    first = None
    for _ in stream:
        if first is None:
            first = clock()
    end = clock()
    assert stream.result is not None  # set once the pieces run out
    return (first if first is not None else end) - start, end - start, stream.result.new_tokens


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    ms = np.asarray(values_ms)
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "runs": len(values_ms),
    }
