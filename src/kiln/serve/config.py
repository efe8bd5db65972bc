"""Typed settings of ``kiln serve``: the server, each model, its batcher.

A serve YAML lists only what differs from these defaults; unknown keys are refused with the key
path and the keys allowed there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kiln.config.section import Section
from kiln.monitor.config import MonitorConfig


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BatchingConfig(Section):
    # Dynamic batching on (default) or one inference call per request.
    enabled: bool = True
    # Most inputs in one model call; a single larger request still runs, alone.
    max_batch_size: int = Field(default=32, ge=1)
    # Longest a request waits for others to join its batch (upper bound of the adaptive delay).
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0)
    # Batch sizes dispatched at once without waiting (Triton's preferred_batch_size).
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    # Shorten the delay at light load from the measured arrival rate and batch latency.
    adaptive: bool = True
    # Most requests waiting in the queue; beyond it requests get 503 with Retry-After.
    max_queue_size: int = Field(default=256, ge=1)
    # Batches computed at the same time (threads of this model's executor); empty: one per CPU
    # core left after each batch's intra-op threads under load (cores // (num_threads * workers),
    # with num_threads 1 when it is auto).
    max_concurrent_batches: int | None = Field(default=None, ge=1)
    # Sort a batch's texts by token length and run chunks of this many, so padding stays short.
    compute_chunk_size: int = Field(default=4, ge=1)

    def concurrency(self, *, num_threads: int, workers: int) -> int:
        """``max_concurrent_batches``, or the number that keeps every core busy without oversubscribing."""
        if self.max_concurrent_batches is not None:
            return self.max_concurrent_batches
        return max(1, available_cpus() // max(1, num_threads * workers))

    @model_validator(mode="after")
    def _check_preferred(self) -> BatchingConfig:
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes must lie in 1..max_batch_size={self.max_batch_size}, "
                    f"got {size}"
                )
        return self


class GenerationLogConfig(Section):
    # Share of this model's generation requests written to the prediction log (0..1);
    # monitor.sample_rate when empty. Needs monitor.enabled.
    sample_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    # Write the prompt and the output text (true) or only their token counts and timings (false).
    log_text: bool = True
    # "module:function" taking a text and returning it redacted, applied to every prompt message
    # and to the output before they are logged; none when empty.
    redact: str | None = None

    @field_validator("redact")
    @classmethod
    def _check_redact(cls, value: str | None) -> str | None:
        if value is not None:
            from kiln.serve.generation.recording import load_redactor

            load_redactor(value)  # raises ValueError saying what cannot be imported or called
        return value

    @model_validator(mode="after")
    def _check_text(self) -> GenerationLogConfig:
        if self.redact is not None and not self.log_text:
            raise ValueError(f"redact ({self.redact}) has no text to redact with log_text false; set one of them")
        return self


class GenerationServingConfig(Section):
    # Most sequences generating at once (prefilling or decoding); each decode step runs them all.
    max_sequences: int = Field(default=16, ge=1)
    # KV-cache tokens a version may hold: each sequence reserves prompt + max_tokens; beyond, requests wait.
    kv_cache_tokens: int = Field(default=32_768, ge=2)
    # Most requests waiting for a sequence slot; beyond it requests get 503 with Retry-After.
    max_waiting: int = Field(default=64, ge=1)
    # Prompt tokens prefilled between two decode steps, so a long prompt never stalls running sequences.
    prefill_chunk_tokens: int = Field(default=256, ge=1)
    # What the prediction log keeps of each request (with monitor.enabled).
    log: GenerationLogConfig = Field(default_factory=GenerationLogConfig)


class ModelConfig(Section):
    # Name clients use in URLs; the package's manifest name when empty.
    name: str | None = None
    # Version number -> package folder or registry reference (name@version, name@alias).
    versions: dict[int, str] = Field(min_length=1)
    # Share of traffic per version, e.g. {3: 90, 4: 10}; the newest version takes all when empty.
    canary: dict[int, int] = Field(default_factory=dict)
    # Request header whose value pins a client to one canary version (sticky routing).
    sticky_header: str | None = None
    # Batcher settings of this model.
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    # Continuous batching of a text-generation model (ignored for other tasks).
    generation: GenerationServingConfig = Field(default_factory=GenerationServingConfig)

    @model_validator(mode="after")
    def _check_canary(self) -> ModelConfig:
        unknown = sorted(set(self.canary) - set(self.versions))
        if unknown:
            raise ValueError(f"canary names versions {unknown} that are not in versions")
        if self.canary and (
            any(w < 0 for w in self.canary.values()) or not sum(self.canary.values())
        ):
            raise ValueError(f"canary weights must be >= 0 with a positive sum, got {self.canary}")
        return self


class ServeConfig(Section):
    config_kind: ClassVar[str] = "serve config"

    # Models served by this process.
    models: list[ModelConfig] = Field(default_factory=list)
    # Interface to bind; anything but loopback requires tokens (token_file or registry_tokens).
    host: str = "127.0.0.1"
    # TCP port.
    port: int = Field(default=8000, ge=0, le=65535)
    # Server processes (each loads every model).
    workers: int = Field(default=1, ge=1)
    # File of bearer tokens, one per line, each acting as a writer token (inference, feedback,
    # management).
    token_file: Path | None = None
    # Also accept the registry's API tokens (KILN_HOME / KILN_DATABASE_URL): a reader token may
    # call inference, feedback needs a feedback token or stronger, management a writer token.
    registry_tokens: bool = False
    # Largest request body accepted; larger bodies get 413.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # Most inputs in one request; more get 413.
    max_request_inputs: int = Field(default=1024, ge=1)
    # Deadline of a request when the client sends no X-Request-Timeout-Ms header.
    request_timeout_ms: float = Field(default=10_000.0, gt=0)
    # Seconds given to in-flight requests after SIGTERM before the process exits.
    grace_period_s: float = Field(default=10.0, ge=0)
    # Intra-op threads per model call: "auto" gives a batch that computes alone every core of
    # this worker process (cores // workers) and each batch one thread when several run or wait;
    # a number >= 1 gives every call that many.
    num_threads: int | Literal["auto"] = "auto"
    # Device for the engines: cpu, cuda...; CUDA when present if empty.
    device: str | None = None
    # Seconds between checks of alias references (name@alias) for a moved alias; 0 is off.
    watch_interval_s: float = Field(default=0.0, ge=0)
    # Mount the registry's HTTP API (KILN_HOME / KILN_DATABASE_URL) under /registry; reads need a
    # reader token, writes a writer or admin token, as with `kiln registry serve`.
    registry_api: bool = False
    # Prediction log, drift and alerts (off by default); the dashboard is at /ui either way.
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @field_validator("num_threads", mode="before")
    @classmethod
    def _check_num_threads(cls, value: Any) -> Any:
        is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if value == "auto" or is_count:
            return value
        raise ValueError(f"num_threads must be 'auto' or an integer >= 1, got {value!r}")


def load_serve_config(path: str | Path, **cli: Any) -> ServeConfig:
    """Read a serve YAML and merge command-line settings (those not None) over it.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    from kiln.config.loader import read_yaml_mapping

    return parse_serve_config(read_yaml_mapping(path, "serve config"), source=str(path), **cli)


def parse_serve_config(
    raw: dict[str, Any], source: str = "<serve config>", **cli: Any
) -> ServeConfig:
    """Validate a mapping (plus command-line settings) into a ``ServeConfig``."""
    merged = dict(raw)
    merged.update({k: v for k, v in cli.items() if v is not None})
    return ServeConfig.parse(merged, source=source)
