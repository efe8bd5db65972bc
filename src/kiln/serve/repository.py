"""Every model and version the server holds, and the atomic switches between them.

A model's state is one immutable ``ModelEntry`` (its versions and its router) kept in a dict.
Loading a version happens off the event loop (resolve, load, warm up); only when it is ready is
a new entry built and swapped in with one assignment, so a request sees either the old or the new
set of versions, never a half-loaded one. A replaced version's batcher then drains its queue
before it stops, so no request fails during a switch; a version that fails to load leaves the
old one serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from kiln.errors import KilnError
from kiln.serve.batching import Batcher
from kiln.serve.config import BatchingConfig, GenerationServingConfig, ModelConfig, ServeConfig
from kiln.serve.generation.engine import GenerationEngine
from kiln.serve.generation.recording import GenerationRecord, GenerationRecorder
from kiln.serve.metrics import ServeMetrics
from kiln.serve.models import ServedGenerator, ServedModel, load_served_model, resolve_source
from kiln.serve.routing import Router
from kiln.serve.threads import plan_threads

logger = logging.getLogger(__name__)


class UnknownModelError(KilnError):
    """No model (or version) of that name is loaded."""


@dataclass(frozen=True)
class PredictionRecord:
    """One answered request, handed to prediction observers (e.g. a monitoring logger)."""

    model: str  # the model name
    version: int  # the version that answered
    inputs: list[Any]  # the checked raw inputs
    outputs: list[dict[str, Any]]  # one output per input
    latency_s: float  # request latency inside the server
    timestamp: float  # wall-clock time (time.time()) of the answer
    request_id: str = ""  # the X-Request-Id header, or one the server made up


PredictionObserver = Callable[["PredictionRecord | GenerationRecord"], None]


@dataclass
class LoadedVersion:
    """A version that serves: a classifier or recommender with its batcher and the threads it
    computes on, or a text-generation model with its continuous-batching engine."""

    model: ServedModel | ServedGenerator
    batcher: Batcher | None = None
    executor: ThreadPoolExecutor | None = None
    engine: GenerationEngine | None = None
    recorder: GenerationRecorder | None = None  # samples a generation version's requests for the log
    loaded_at: float = field(default_factory=time.time)

    @property
    def is_full(self) -> bool:
        """Whether a new request would be refused for lack of room in the queue."""
        if self.engine is not None:
            return self.engine.is_full
        return self.batcher is not None and self.batcher.is_full

    async def predict(self, inputs: list[Any], *, deadline: float | None) -> Any:
        """Submit checked inputs through the batcher (or straight to the model when off)."""
        if self.batcher is None:
            self.model.check_inputs(inputs)  # a generation model refuses them, naming its endpoints
            raise RuntimeError(f"model {self.model.name} has no batcher")
        return await self.batcher.submit(inputs, deadline=deadline)


@dataclass(frozen=True)
class ModelEntry:
    """A model's loaded versions and its routing; replaced whole, never mutated."""

    name: str
    versions: Mapping[int, LoadedVersion]
    router: Router


class ModelRepository:
    """Loads, routes to, reloads and unloads model versions."""

    def __init__(self, config: ServeConfig, metrics: ServeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.observers: list[PredictionObserver] = []  # called after every answered request
        self._entries: dict[str, ModelEntry] = {}
        self._batching: dict[str, BatchingConfig] = {}
        self._generation: dict[str, GenerationServingConfig] = {}
        self._sources: dict[tuple[str, int], str] = {}
        self.threads = plan_threads(config)  # intra-op threads per model call, by load
        self._lock = asyncio.Lock()
        self._is_ready = False
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def is_ready(self) -> bool:
        """True once every configured model is loaded and warmed up, until shutdown."""
        return self._is_ready

    def names(self) -> list[str]:
        """Names of the loaded models."""
        return sorted(self._entries)

    def entry(self, name: str) -> ModelEntry:
        """The current entry of a model.

        Raises:
            UnknownModelError: no model of that name.
        """
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"unknown model {name!r}; loaded models: {known}")
        return entry

    def route(self, name: str, version: int | None = None, key: str | None = None) -> LoadedVersion:
        """The version that answers a request: ``version`` if given, else the router's choice.

        Raises:
            UnknownModelError: unknown model or version.
        """
        entry = self.entry(name)
        if version is None:
            version = entry.router.choose(list(entry.versions), key)
        loaded = entry.versions.get(version)
        if loaded is None:
            known = ", ".join(str(v) for v in sorted(entry.versions))
            raise UnknownModelError(f"model {name!r} has no version {version}; loaded: {known}")
        return loaded

    async def start(self) -> None:
        """Load and warm up every configured model version, then report ready."""
        for model_cfg in self.config.models:
            await self.load_model(model_cfg)
        if self.config.watch_interval_s > 0:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_aliases())
        self._is_ready = True

    async def stop(self) -> None:
        """Report not ready, finish queued requests and stop every batcher."""
        self._is_ready = False
        if self._watch_task is not None:
            self._watch_task.cancel()
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            for version, loaded in entry.versions.items():
                await self._retire(entry.name, version, loaded)

    async def load_model(self, model_cfg: ModelConfig) -> None:
        """Load all versions of a configured model and apply its canary weights."""
        name = model_cfg.name
        for version, source in sorted(model_cfg.versions.items()):
            loaded = await self.load_version(
                name, version, source, batching=model_cfg.batching, generation=model_cfg.generation
            )
            name = loaded.model.name
        if model_cfg.canary or model_cfg.sticky_header:
            assert name is not None  # versions holds at least one entry, so a loaded model named it
            self.set_routing(name, model_cfg.canary, model_cfg.sticky_header)

    async def load_version(
        self,
        name: str | None,
        version: int | None,
        source: str,
        *,
        batching: BatchingConfig | None = None,
        generation: GenerationServingConfig | None = None,
    ) -> LoadedVersion:
        """Load, warm up and switch in one version; the previous holder of that version drains.

        Raises:
            ModelLoadError: the new version failed; whatever was serving keeps serving.
        """
        async with self._lock:
            cfg = batching or self._batching.get(name or "", BatchingConfig())
            gen_cfg = generation or self._generation.get(name or "", GenerationServingConfig())
            served = await asyncio.to_thread(
                load_served_model,
                name=name,
                version=version,
                source=source,
                device=self.config.device,
                num_threads=self.threads.shared,
                chunk_size=cfg.compute_chunk_size,
                thread_counts=self.threads.counts,
            )
            if isinstance(served, ServedGenerator):
                loaded = self._start_engine(served, gen_cfg)
            else:
                loaded = self._start_version(served, cfg)
            old_entry = self._entries.get(served.name)
            versions = dict(old_entry.versions) if old_entry else {}
            replaced = versions.get(served.version)
            versions[served.version] = loaded
            router = old_entry.router if old_entry else Router()
            self._entries[served.name] = ModelEntry(served.name, versions, router)  # the switch
            self._batching[served.name] = cfg
            self._generation[served.name] = gen_cfg
            self._sources[(served.name, served.version)] = source
            self.metrics.models_loaded.set(self._count_versions())
            logger.info("serving %s version %s from %s", served.name, served.version, source)
        if replaced is not None:
            await self._retire(served.name, served.version, replaced)
        return loaded

    async def unload_version(self, name: str, version: int) -> None:
        """Stop routing to a version, let its queued requests finish, then free it.

        Raises:
            UnknownModelError: unknown model or version, or the model's last version.
        """
        async with self._lock:
            entry = self.entry(name)
            if version not in entry.versions:
                raise UnknownModelError(f"model {name!r} has no version {version}")
            if len(entry.versions) == 1:
                raise UnknownModelError(
                    f"version {version} is the last of model {name!r}; load another first"
                )
            versions = {v: lv for v, lv in entry.versions.items() if v != version}
            loaded = entry.versions[version]
            self._entries[name] = ModelEntry(name, versions, entry.router.without(version))
            self._sources.pop((name, version), None)
            self.metrics.models_loaded.set(self._count_versions())
        await self._retire(name, version, loaded)

    def set_routing(
        self, name: str, weights: Mapping[int, int], sticky_header: str | None
    ) -> Router:
        """Set a model's canary weights (empty: newest version) and sticky header.

        Raises:
            UnknownModelError: unknown model, or weights naming a version that is not loaded.
        """
        entry = self.entry(name)
        missing = sorted(set(weights) - set(entry.versions))
        if missing:
            raise UnknownModelError(
                f"model {name!r}: canary names versions {missing} that are "
                f"not loaded ({sorted(entry.versions)})"
            )
        router = Router.from_weights(weights, sticky_header)
        self._entries[name] = replace(entry, router=router)
        return router

    def notify(self, record: PredictionRecord | GenerationRecord) -> None:
        """Hand a record to every observer; an observer's failure never fails the request."""
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                logger.exception("prediction observer %r failed", observer)

    def _start_version(self, served: ServedModel, cfg: BatchingConfig) -> LoadedVersion:
        plan = self.threads
        concurrency = cfg.concurrency(num_threads=plan.shared, workers=self.config.workers)
        cfg = cfg.model_copy(update={"max_concurrent_batches": concurrency})
        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"kiln-{served.name}")
        labels = (served.name, str(served.version))

        async def handler(inputs: list[Any]) -> list[dict[str, Any]]:
            # The batch counts itself among those in flight; the load seen as it starts decides.
            threads = plan.threads_for(
                batches_in_flight=batcher.batches_in_flight, is_waiting=batcher.is_waiting
            )
            self.metrics.batch_threads.labels(*labels, str(threads)).inc()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, served.predict_batch, inputs, threads)

        def on_batch(size: int, compute_s: float) -> None:
            self.metrics.batch_size.labels(*labels).observe(size)
            self.metrics.compute_time.labels(*labels).observe(compute_s)

        # Batching off is a batcher that never groups requests: one model call per request.
        effective = (
            cfg
            if cfg.enabled
            else cfg.model_copy(
                update={"max_batch_size": 1, "max_queue_delay_ms": 0.0, "preferred_batch_sizes": []}
            )
        )
        batcher = Batcher(
            handler, effective, name=f"{served.name}:{served.version}", on_batch=on_batch
        )
        batcher.start()
        self.metrics.track_queue(served.name, served.version, lambda: batcher.depth)
        return LoadedVersion(model=served, batcher=batcher, executor=executor)

    def _start_engine(self, served: ServedGenerator, cfg: GenerationServingConfig) -> LoadedVersion:
        engine = GenerationEngine(
            served.predictor,
            cfg,
            name=f"{served.name}:{served.version}",
            hooks=self.metrics.engine_hooks(served.name, served.version),
            num_threads=self.threads.alone,
        )
        from kiln.runtime.package import package_digest

        log = cfg.log
        recorder = GenerationRecorder(
            model=served.name,
            version=served.version,
            package_digest=package_digest(served.predictor.manifest),
            sample_rate=self.config.monitor.sample_rate if log.sample_rate is None else log.sample_rate,
            log_text=log.log_text,
            redact=log.redact,
            notify=self.notify,
        )
        engine.start()
        self.metrics.track_engine(served.name, served.version, engine)
        return LoadedVersion(model=served, engine=engine, recorder=recorder)

    async def _retire(self, name: str, version: int, loaded: LoadedVersion) -> None:
        # A replaced generation version finishes the sequences it started (streams included).
        if loaded.engine is not None:
            await loaded.engine.stop(drain=True)
        if loaded.batcher is not None:
            await loaded.batcher.stop(drain=True)
        if loaded.executor is not None:
            loaded.executor.shutdown(wait=False)
        if name not in self._entries or version not in self._entries[name].versions:
            self.metrics.forget_version(name, version)

    def _count_versions(self) -> int:
        return sum(len(e.versions) for e in self._entries.values())

    async def _watch_aliases(self) -> None:
        """Reload a version whose alias reference now resolves to another package folder."""
        while True:
            await asyncio.sleep(self.config.watch_interval_s)
            for (name, version), source in list(self._sources.items()):
                try:
                    resolved = await asyncio.to_thread(resolve_source, source)
                    if not resolved.is_alias:
                        continue
                    current = self._entries[name].versions[version].model.predictor.path
                    if resolved.path.resolve() == current.resolve():
                        continue
                    await self.load_version(name, resolved.version, source)
                    if resolved.version is not None and resolved.version != version:
                        await self.unload_version(name, version)
                except Exception as exc:  # keep serving the old version; try again next time
                    logger.warning("reload of %s@%s from %s failed: %s", name, version, source, exc)
