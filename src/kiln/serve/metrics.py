"""Prometheus metrics of the server, in seconds, one registry per app.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Each app has
its own ``CollectorRegistry`` so that several apps (tests, embedding) never share series. With
``--workers N`` every process reports its own series; scrape each or aggregate by instance.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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

    def track_queue(self, model: str, version: int, depth: Callable[[], float]) -> None:
        """Report a version's queue depth from ``depth`` at every scrape."""
        self.queue_depth.labels(model, str(version)).set_function(depth)

    def forget_version(self, model: str, version: int) -> None:
        """Drop a version's queue gauge once it is unloaded."""
        try:
            self.queue_depth.remove(model, str(version))
        except KeyError:
            pass

    def exposition(self) -> bytes:
        """The text exposition format of every series."""
        return generate_latest(self.registry)
