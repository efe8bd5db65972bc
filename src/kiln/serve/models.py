"""A model package as the server runs it: where it comes from, input checks, batched predict.

Packages are loaded only through ``kiln.runtime.load`` from a local folder, or from a registry
reference (``name@version``, ``name@alias``) that the registry resolves to a local folder. No URL
is ever fetched and no pickle is ever read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.runtime import Generator, Predictor
from kiln.runtime.predictor import Engine
from kiln.runtime.preprocessing import ImagePreprocessor, InputError, TextPreprocessor
from kiln.runtime.recommender import Recommender, RecommendQuery

_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)@(?P<tag>[A-Za-z0-9_.-]+)$")


class ModelLoadError(KilnError):
    """A model source that cannot be resolved, loaded or warmed up."""


@dataclass(frozen=True)
class ResolvedSource:
    """A model source resolved to a local package folder."""

    path: Path  # the package folder
    name: str | None  # the registry name when the source was a reference
    version: int | None  # the version number the reference named or resolved to
    is_alias: bool  # the reference names an alias that may move (hot reload watches it)


def resolve_source(source: str) -> ResolvedSource:
    """Resolve a package folder or a registry reference to a local folder.

    Raises:
        ModelLoadError: a URL, a missing folder, or a reference without a registry.
    """
    if "://" in source:
        raise ModelLoadError(
            f"{source}: loading models from URLs is not allowed; give a package "
            "folder or a registry reference name@version / name@alias"
        )
    path = Path(source)
    if path.is_dir():
        return ResolvedSource(path=path, name=None, version=None, is_alias=False)
    match = _REF.match(source)
    if match is None:
        raise ModelLoadError(
            f"{source}: not a package folder, nor a reference name@version / name@alias"
        )
    try:
        from kiln.registry import resolve_reference
    except ImportError:
        raise ModelLoadError(
            f"{source}: registry references need the Kiln registry, which is not available "
            "here; give a package folder instead"
        ) from None
    try:
        resolved = Path(resolve_reference(source))
    except KilnError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    tag = match["tag"]
    version = int(tag) if tag.isdigit() else _version_of(resolved)
    return ResolvedSource(
        path=resolved, name=match["name"], version=version, is_alias=not tag.isdigit()
    )


def _version_of(path: Path) -> int | None:
    from kiln.runtime import read_manifest

    manifest = read_manifest(path, verify=False)
    for candidate in (
        manifest.get("version"),
        (manifest.get("registry") or {}).get("version"),
        path.name,
    ):
        if isinstance(candidate, int) or (isinstance(candidate, str) and candidate.isdigit()):
            return int(candidate)
    return None


class ServedModel:
    """One loaded package version: checks raw inputs and predicts whole batches.

    A classifier keeps one engine per intra-op thread count it is served with (``thread_counts``);
    each batch names the count it runs at. A recommender runs every batch at its load-time count.
    """

    def __init__(
        self,
        *,
        name: str,
        version: int,
        predictor: Predictor | Recommender,
        source: str,
        chunk_size: int = 16,
        thread_counts: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.version = version
        self.predictor = predictor
        self.source = source
        self.chunk_size = chunk_size
        self.engines: dict[int, Engine] = (
            {n: predictor.engine.with_threads(n) for n in thread_counts}
            if isinstance(predictor, Predictor)
            else {}
        )
        self.labels = predictor.labels
        self.kind: str = predictor.manifest["preprocessing"]["kind"]
        prep = predictor.manifest["preprocessing"]
        self.image_shape: tuple[int, ...] = tuple(int(s) for s in prep.get("shape", ()))
        self.max_length: int | None = int(prep["max_length"]) if "max_length" in prep else None

    def check_inputs(self, inputs: list[Any]) -> list[Any]:
        """Validate raw inputs on the caller's thread so that one bad input never fails a batch.

        Returns the inputs ready for ``predict_batch`` (images as float32 arrays).

        Raises:
            InputError: naming the index of the first bad input.
        """
        if not inputs:
            raise InputError("inputs: expected a non-empty list")
        if self.kind == "recommendation":
            if not all(isinstance(q, RecommendQuery) for q in inputs):
                raise InputError(
                    f"model {self.name!r} is a recommendation model; use POST /v1/models/{self.name}:recommend"
                )
            return self._recommender().check(inputs)
        if self.kind == "text":
            for i, text in enumerate(inputs):
                if not isinstance(text, str):
                    raise InputError(f"inputs[{i}]: expected a string, got {type(text).__name__}")
            return inputs
        size = int(np.prod(self.image_shape))
        checked = []
        prep = self._image_preprocessor()
        for i, image in enumerate(inputs):
            if isinstance(image, (str, bytes)):
                checked.append(prep.decode(image, where=f"inputs[{i}]"))
                continue
            try:
                arr = np.asarray(image, dtype=np.float32)
            except (TypeError, ValueError):
                raise InputError(
                    f"inputs[{i}]: expected a numeric array of shape {list(self.image_shape)}"
                ) from None
            if arr.size != size:
                raise InputError(
                    f"inputs[{i}]: expected {size} values (shape "
                    f"{list(self.image_shape)}), got {arr.size}"
                )
            if not np.isfinite(arr).all():
                raise InputError(f"inputs[{i}]: values must be finite numbers")
            checked.append(arr)
        return checked

    def predict_batch(self, inputs: list[Any], threads: int | None = None) -> list[dict[str, Any]]:
        """Predict checked inputs with ``threads`` intra-op threads (one of ``thread_counts``;
        None: the engine as loaded); texts are grouped by token length so padding stays short.

        Raises:
            ValueError: ``threads`` is not a count this model was prepared for.
        """
        if self.kind == "recommendation":
            return self._recommender().recommend(inputs)
        engine = self._engine(threads)
        if self.kind == "text":
            return self._predict_texts(inputs, engine)
        prep = self._image_preprocessor()
        probs = _softmax(engine(prep.normalize(prep.to_unit(inputs))))
        return [self._output(row) for row in probs]

    def warm_up(self) -> None:
        """Run a few batches on every engine so the first real request pays no one-off costs."""
        counts: list[int | None] = [*sorted(self.engines)] or [None]
        for threads in counts:
            for n in (1, min(4, self.chunk_size)):
                if self.kind == "recommendation":
                    users = self._recommender().user_ids[:n]
                    self.predict_batch([RecommendQuery(user_id=u) for u in users])
                elif self.kind == "text":
                    self.predict_batch(["warm up the model"] * n, threads)
                else:
                    self.predict_batch([np.zeros(self.image_shape, dtype=np.float32)] * n, threads)

    def _engine(self, threads: int | None) -> Engine:
        if threads is None:
            return self._classifier().engine
        engine = self.engines.get(threads)
        if engine is None:
            raise ValueError(
                f"model {self.name} has engines for {sorted(self.engines)} intra-op threads, "
                f"not {threads}"
            )
        return engine

    def _predict_texts(self, texts: list[str], engine: Engine) -> list[dict[str, Any]]:
        prep = self._classifier().preprocessor
        assert isinstance(prep, TextPreprocessor)  # kind "text"
        encodings = prep.tokenizer.encode_batch(texts)
        ids = [enc.ids for enc in encodings]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        probs = np.empty((len(ids), len(self.labels)), dtype=np.float32)
        # A support package scores how far out of scope each text is, from the same forward pass.
        scorer = self._classifier().out_of_scope
        oos = np.empty(len(ids), dtype=np.float64) if scorer is not None else None
        for start in range(0, len(order), self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            features = prep.collate([ids[i] for i in chunk])
            if scorer is None:
                probs[chunk] = _softmax(engine(features))
                continue
            if scorer.needs_embedding:
                logits, embeddings = engine.logits_and_embedding(features)
            else:
                logits, embeddings = engine(features), None
            probs[chunk] = _softmax(logits)
            assert oos is not None
            oos[chunk] = scorer.score(logits, embeddings)
        outputs = [
            self._output(row, truncated=bool(enc.overflowing))
            for row, enc in zip(probs, encodings, strict=True)
        ]
        if oos is not None:
            for out, score in zip(outputs, oos, strict=True):
                out["oos_score"] = float(score)
        return outputs

    def _classifier(self) -> Predictor:
        if isinstance(self.predictor, Recommender):
            raise InputError(
                f"model {self.name!r} is a recommendation model; use POST /v1/models/{self.name}:recommend"
            )
        return self.predictor

    def _recommender(self) -> Recommender:
        if isinstance(self.predictor, Predictor):
            raise InputError(
                f"model {self.name!r} is not a recommendation model; use POST /v1/models/{self.name}:predict"
            )
        return self.predictor

    def _image_preprocessor(self) -> ImagePreprocessor:
        prep = self._classifier().preprocessor
        assert isinstance(prep, ImagePreprocessor)  # kind "image"
        return prep

    def _output(self, row: np.ndarray, truncated: bool | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.labels[int(row.argmax())],
            "scores": {label: float(p) for label, p in zip(self.labels, row, strict=True)},
        }
        if truncated is not None:
            out["truncated"] = truncated
        return out


class ServedGenerator:
    """One loaded text-generation version: answered through the OpenAI-compatible endpoints."""

    kind = "generation"

    def __init__(self, *, name: str, version: int, predictor: Generator, source: str) -> None:
        self.name = name
        self.version = version
        self.predictor = predictor
        self.source = source
        self.labels: list[str] = []
        self.max_length: int | None = predictor.context_length

    def check_inputs(self, inputs: list[Any]) -> list[Any]:
        """Refuse classifier-style inputs: a generation model answers chat and completion requests.

        Raises:
            InputError: always, naming the endpoints to use.
        """
        raise InputError(
            f"model {self.name!r} is a text-generation model; use POST /v1/chat/completions "
            "or POST /v1/completions"
        )

    def warm_up(self) -> None:
        """Generate a few tokens alone and in a batch so the first request pays no one-off costs."""
        from kiln.runtime.kv_batch import check_cache_layout

        try:
            check_cache_layout(self.predictor.model)
        except ValueError as exc:
            raise ModelLoadError(f"{self.source}: {exc}") from exc
        self.predictor.generate(["warm up the model"] * 2, max_new_tokens=2)


def load_served_model(
    *,
    name: str | None,
    version: int | None,
    source: str,
    device: str | None,
    num_threads: int,
    chunk_size: int,
    thread_counts: Sequence[int] = (),
    loader: Callable[..., Predictor | Recommender | Generator] | None = None,
) -> ServedModel | ServedGenerator:
    """Resolve, load and warm up one version (blocking; run it off the event loop).

    The package loads with ``num_threads`` intra-op threads; a classifier also gets an engine for
    each of ``thread_counts``.

    Raises:
        ModelLoadError: the source cannot be resolved or the package fails to load or warm up.
    """
    from kiln.runtime import load

    resolved = resolve_source(source)
    try:
        predictor = (loader or load)(resolved.path, device=device, num_threads=num_threads)
    except KilnError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    if not isinstance(predictor, Predictor | Recommender | Generator):
        raise ModelLoadError(
            f"{source}: a {predictor.task!r} package; kiln serve serves classification, "
            "recommendation and text-generation packages"
        )
    served_name = name or resolved.name or str(predictor.manifest.get("name") or resolved.path.name)
    served_version = version if version is not None else (resolved.version or 1)
    served: ServedModel | ServedGenerator
    try:
        if isinstance(predictor, Generator):
            served = ServedGenerator(
                name=served_name, version=served_version, predictor=predictor, source=source
            )
        else:
            served = ServedModel(
                name=served_name,
                version=served_version,
                predictor=predictor,
                source=source,
                chunk_size=chunk_size,
                thread_counts=thread_counts,
            )
    except KilnError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    try:
        served.warm_up()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{source}: warm-up failed: {exc}") from exc
    return served


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def read_source_identity(source: str) -> tuple[str, int]:
    """The (name, version) a source serves as, read from its manifest without loading weights.

    Raises:
        ModelLoadError: the source does not resolve to a package.
    """
    from kiln.runtime import read_manifest

    resolved = resolve_source(source)
    try:
        manifest = read_manifest(resolved.path, verify=False)
    except KilnError as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    name = resolved.name or str(manifest.get("name") or resolved.path.name)
    version = resolved.version if resolved.version is not None else _version_of(resolved.path)
    return name, version if version is not None else 1
