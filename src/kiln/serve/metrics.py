"""Prometheus metrics of the server, in seconds, one registry per app.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Each app has
its own ``CollectorRegistry`` so that several apps (tests, embedding) never share series. With
``--workers N`` every process reports its own series; scrape each or aggregate by instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kiln.serve.generation.engine import EngineHooks

if TYPE_CHECKING:
    from kiln.serve.generation.engine import GenerationEngine

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_GAP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
_GENERATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """The server's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kiln_requests",
            "Inference requests by model, version and HTTP status.",
            ["model", "version", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "kiln_request_duration_seconds",
            "Time from request parsed to response ready.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_time = Histogram(
            "kiln_queue_duration_seconds",
            "Time a request waited for its batch to start.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_time = Histogram(
            "kiln_compute_duration_seconds",
            "Time one batch spent in the model.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "kiln_batch_size",
            "Inputs per model call.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_threads = Counter(
            "kiln_batches",
            "Model calls by model, version and the intra-op threads they were given.",
            ["model", "version", "threads"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "kiln_queue_depth",
            "Requests waiting for a batch.",
            ["model", "version"],
            registry=r,
        )
        self.in_flight = Gauge(
            "kiln_requests_in_flight",
            "Inference requests being handled.",
            registry=r,
        )
        self.models_loaded = Gauge(
            "kiln_models_loaded",
            "Model versions loaded and ready.",
            registry=r,
        )

        self.time_to_first_token = Histogram(
            "kiln_generation_time_to_first_token_seconds",
            "Time from a generation request queued to its first token.",
            ["model", "version"],
            buckets=_GENERATION_BUCKETS_S,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "kiln_generation_inter_token_latency_seconds",
            "Time between two tokens of one sequence.",
            ["model", "version"],
            buckets=_TOKEN_GAP_BUCKETS_S,
            registry=r,
        )
        self.generation_duration = Histogram(
            "kiln_generation_duration_seconds",
            "Time from a generation request queued to its last token (or its cancellation).",
            ["model", "version"],
            buckets=_GENERATION_BUCKETS_S,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "kiln_generation_prompt_tokens",
            "Prompt tokens of generation requests that ran.",
            ["model", "version"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "kiln_generation_completion_tokens",
            "Tokens generated.",
            ["model", "version"],
            registry=r,
        )
        self.cancelled_sequences = Counter(
            "kiln_generation_cancelled",
            "Sequences cancelled before they finished (the client disconnected).",
            ["model", "version"],
            registry=r,
        )
        self.timed_out_sequences = Counter(
            "kiln_generation_timed_out",
            "Sequences stopped at their deadline (X-Request-Timeout-Ms) before they finished.",
            ["model", "version"],
            registry=r,
        )
        self.decode_batch_size = Histogram(
            "kiln_generation_decode_batch_size",
            "Sequences in one decode step.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.running_sequences = Gauge(
            "kiln_generation_running_sequences",
            "Sequences prefilling or decoding.",
            ["model", "version"],
            registry=r,
        )
        self.waiting_sequences = Gauge(
            "kiln_generation_waiting_sequences",
            "Generation requests waiting for a sequence slot or KV-cache budget.",
            ["model", "version"],
            registry=r,
        )
        self.kv_cache_reserved = Gauge(
            "kiln_generation_kv_cache_reserved_tokens",
            "KV-cache tokens reserved by running sequences (prompt + max_tokens each).",
            ["model", "version"],
            registry=r,
        )
        self.kv_cache_held = Gauge(
            "kiln_generation_kv_cache_held_tokens",
            "Token slots the decode batch's KV cache holds now, left padding included.",
            ["model", "version"],
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "kiln_generation_kv_cache_usage_ratio",
            "Reserved KV-cache tokens over the budget (kv_cache_tokens).",
            ["model", "version"],
            registry=r,
        )

    def track_queue(self, model: str, version: int, depth: Callable[[], float]) -> None:
        """Report a version's queue depth from ``depth`` at every scrape."""
        self.queue_depth.labels(model, str(version)).set_function(depth)

    def track_engine(self, model: str, version: int, engine: GenerationEngine) -> None:
        """Report a generation version's sequences and KV-cache use from ``engine`` at every scrape."""
        labels = (model, str(version))
        budget = engine.config.kv_cache_tokens
        self.running_sequences.labels(*labels).set_function(lambda: engine.running)
        self.waiting_sequences.labels(*labels).set_function(lambda: engine.waiting)
        self.kv_cache_reserved.labels(*labels).set_function(lambda: engine.reserved_tokens)
        self.kv_cache_held.labels(*labels).set_function(lambda: engine.cache_cells)
        self.kv_cache_usage.labels(*labels).set_function(lambda: engine.reserved_tokens / budget)

    def engine_hooks(self, model: str, version: int) -> EngineHooks:
        """Hooks that record a generation version's timings and token counts."""
        return _MetricHooks(self, (model, str(version)))

    def forget_version(self, model: str, version: int) -> None:
        """Drop a version's gauges once it is unloaded."""
        for gauge in (
            self.queue_depth,
            self.running_sequences,
            self.waiting_sequences,
            self.kv_cache_reserved,
            self.kv_cache_held,
            self.kv_cache_usage,
        ):
            try:
                gauge.remove(model, str(version))
            except KeyError:
                pass

    def exposition(self) -> bytes:
        """The text exposition format of every series."""
        return generate_latest(self.registry)


class _MetricHooks(EngineHooks):
    """Engine hooks bound to one version's labelled series (children resolved once)."""

    def __init__(self, metrics: ServeMetrics, labels: tuple[str, str]) -> None:
        self._ttft = metrics.time_to_first_token.labels(*labels)
        self._gap = metrics.inter_token_latency.labels(*labels)
        self._duration = metrics.generation_duration.labels(*labels)
        self._prompt = metrics.prompt_tokens.labels(*labels)
        self._completion = metrics.completion_tokens.labels(*labels)
        self._batch = metrics.decode_batch_size.labels(*labels)
        self._cancelled = metrics.cancelled_sequences.labels(*labels)
        self._timed_out = metrics.timed_out_sequences.labels(*labels)

    def first_token(self, ttft_s: float) -> None:
        self._ttft.observe(ttft_s)

    def next_token(self, gap_s: float) -> None:
        self._gap.observe(gap_s)

    def finished(self, *, duration_s: float, prompt_tokens: int, completion_tokens: int) -> None:
        self._duration.observe(duration_s)
        self._prompt.inc(prompt_tokens)
        self._completion.inc(completion_tokens)

    def decode_step(self, batch_size: int) -> None:
        self._batch.observe(batch_size)

    def cancelled(self) -> None:
        self._cancelled.inc()

    def timed_out(self) -> None:
        self._timed_out.inc()
