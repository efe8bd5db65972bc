"""Load a package to run it: the only code that runs a package, for every stage.

Callers that need one kind of package use a typed loader (``load_classifier``,
``kiln.runtime.recommender.load_recommender`` and ``kiln.runtime.generation.load_generator``),
which refuses a package of another task with a ``PackageError`` naming it; ``load`` returns
whichever the package's task calls for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kiln.errors import PackageError
from kiln.runtime.outofscope import OutOfScopeScorer, load_scorer
from kiln.runtime.package import packaged_file, read_manifest, require_task
from kiln.runtime.preprocessing import ImagePreprocessor, TextPreprocessor, make_preprocessor

if TYPE_CHECKING:
    from kiln.runtime.generation import Generator
    from kiln.runtime.recommender import Recommender

# Tasks whose packages load into a ``Predictor`` (labels and class probabilities out).
CLASSIFIER_TASKS = ("text-classification", "image-classification")


class Engine(Protocol):
    """Runs model features to logits; one implementation per package format."""

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray: ...

    def with_threads(self, threads: int) -> Engine:
        """The same model run with ``threads`` intra-op threads per call."""
        ...

    def logits_and_embedding(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the pooled embedding from one run (None when the model exposes none)."""
        ...


class TorchEngine:
    """Runs a PyTorch module in inference mode on one device.

    With ``threads`` set, each call first sets the calling thread's intra-op thread count. Under
    PyTorch's OpenMP backend that count belongs to the calling thread (OpenMP's per-thread
    ``nthreads-var``; PyTorch copies the process-wide value into a thread once, on its first
    parallel region), so calls on different threads can run with different counts at once.
    """

    def __init__(self, model: Any, device: Any, *, threads: int | None = None) -> None:
        self.model = model.to(device)
        self.device = device
        self.threads = threads

    def with_threads(self, threads: int) -> TorchEngine:
        """This module run with ``threads`` intra-op threads per call (the module is shared).

        Without the OpenMP backend the count is process-wide, so calls side by side would fight
        over it: the engine then keeps the count set at load time.
        """
        import torch

        if not torch.backends.openmp.is_available():
            return self
        return TorchEngine(self.model, self.device, threads=threads)

    def _set_threads(self) -> None:
        import torch

        # get_num_threads first: it gives this thread PyTorch's one-time per-thread setup, which
        # would otherwise overwrite the count set here on the first parallel region.
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _tensors(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        """The features as tensors on the model's device; float ones in the model's dtype (a model
        cast to fp16/bf16 needs its float inputs in that dtype too)."""
        import torch

        dtype = next(self.model.parameters()).dtype
        return {
            k: torch.from_numpy(v).to(self.device, dtype if v.dtype.kind == "f" else None)
            for k, v in features.items()
        }

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        from kiln.runtime.architectures import logits_of

        self._set_threads()
        with torch.inference_mode():
            return logits_of(self.model, self._tensors(features)).float().cpu().numpy()

    def logits_and_embedding(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the last layer's mean over real tokens, from one forward pass (None: no tokens)."""
        import torch

        from kiln.runtime.architectures import logits_of, masked_mean

        self._set_threads()
        with torch.inference_mode():
            tensors = self._tensors(features)
            if "input_ids" not in tensors or not hasattr(self.model, "config"):
                return logits_of(self.model, tensors).float().cpu().numpy(), None
            out = self.model(**tensors, output_hidden_states=True)
            pooled = masked_mean(out.hidden_states[-1], tensors["attention_mask"])
            return out.logits.float().cpu().numpy(), pooled.float().cpu().numpy()

    def embed(self, features: dict[str, np.ndarray]) -> np.ndarray | None:
        """The encoder's pooled representation (mean over real tokens, or CNN features), or None."""
        import torch

        from kiln.runtime.architectures import masked_mean

        self._set_threads()
        with torch.inference_mode():
            tensors = self._tensors(features)
            if "pixel_values" in tensors and hasattr(self.model, "features"):
                return self.model.features(tensors["pixel_values"]).flatten(1).float().cpu().numpy()
            base = getattr(self.model, getattr(self.model, "base_model_prefix", ""), None)
            if base is None or "input_ids" not in tensors:
                return None
            pooled = masked_mean(base(**tensors).last_hidden_state, tensors["attention_mask"])
            return pooled.float().cpu().numpy()


class Predictor:
    """A loaded package: raw inputs in, labels and class probabilities out.

    A support package (``app.out_of_scope`` in its manifest) also scores how far out of scope
    each input is, from the same forward pass: ``predict`` adds ``oos_score`` to each output.
    """

    def __init__(
        self,
        *,
        path: Path,
        manifest: dict[str, Any],
        preprocessor: TextPreprocessor | ImagePreprocessor,
        engine: Engine,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.preprocessor = preprocessor
        self.engine = engine
        self.labels: list[str] = list(manifest["labels"])
        self.task: str = manifest["task"]
        section = (manifest.get("app") or {}).get("out_of_scope")
        self.out_of_scope: OutOfScopeScorer | None = load_scorer(path, section) if section else None

    def predict_proba(self, inputs: Sequence[Any]) -> np.ndarray:
        """Class probabilities, shape (len(inputs), len(labels))."""
        return _softmax(self._checked(self.engine(self.preprocessor(inputs)), len(inputs)))

    def logits_and_embedding(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and pooled embeddings from one forward pass; embeddings None when the model exposes none."""
        logits, embeddings = self.engine.logits_and_embedding(self.preprocessor(inputs))
        return self._checked(logits, len(inputs)), embeddings

    def scored(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and the package's out-of-scope scores (None without a scorer)."""
        if self.out_of_scope is None:
            return self.predict_proba(inputs), None
        if self.out_of_scope.needs_embedding:
            logits, embeddings = self.logits_and_embedding(inputs)
            if embeddings is None:
                raise PackageError(
                    f"{self.path}: the {self.out_of_scope.method} out-of-scope score needs pooled embeddings, "
                    "which this package's model does not output"
                )
        else:
            logits, embeddings = self._checked(self.engine(self.preprocessor(inputs)), len(inputs)), None
        return _softmax(logits), self.out_of_scope.score(logits, embeddings)

    def _checked(self, logits: np.ndarray, n: int) -> np.ndarray:
        if logits.shape != (n, len(self.labels)):
            raise RuntimeError(
                f"model returned logits of shape {logits.shape} for {n} inputs and {len(self.labels)} labels"
            )
        return logits

    def embed(self, inputs: Sequence[Any]) -> np.ndarray | None:
        """Pooled encoder embeddings, shape (len(inputs), dim); None when the engine has none (ONNX)."""
        embed = getattr(self.engine, "embed", None)
        if embed is None:
            return None
        try:
            return embed(self.preprocessor(inputs))
        except (AttributeError, TypeError):  # a module without an encoder to pool (e.g. int8 wrappers)
            return None

    def predict(self, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        """One ``{"label": str, "scores": {label: probability}}`` per raw input (and ``oos_score``
        for a package with an out-of-scope score)."""
        probs, oos = self.scored(inputs)
        results: list[dict[str, Any]] = []
        for i, row in enumerate(probs):
            result: dict[str, Any] = {
                "label": self.labels[int(row.argmax())],
                "scores": {lab: float(p) for lab, p in zip(self.labels, row, strict=True)},
            }
            if oos is not None:
                result["oos_score"] = float(oos[i])
            results.append(result)
        return results


def load(
    path: str | Path,
    *,
    device: str | None = None,
    num_threads: int | None = None,
    inter_op_threads: int | None = None,
    verify: bool = True,
) -> Predictor | Recommender | Generator:
    """Load a model package folder into a ``Predictor`` (a ``Recommender`` for recommendation,
    a ``Generator`` for text generation).

    Prefer ``load_classifier``, ``load_recommender`` or ``load_generator`` when only one kind of
    package will do.

    Args:
        path: the package folder (holding ``kiln.json``).
        device: ``cpu``, ``cuda``...; CUDA when present if empty.
        num_threads: intra-op threads for the engine; the library default if empty.
        inter_op_threads: inter-op threads (ONNX Runtime); the library default if empty.
        verify: check every file's sha256 against the manifest first.

    Raises:
        PackageError: the package is missing, incomplete or altered.
    """
    folder = Path(path)
    manifest = read_manifest(folder, verify=verify)
    if manifest.get("task") == "recommendation":
        from kiln.runtime.recommender import recommender_from_manifest

        return recommender_from_manifest(folder, manifest, num_threads=num_threads)
    if manifest.get("task") == "text-generation":
        from kiln.runtime.generation import generator_from_manifest

        return generator_from_manifest(folder, manifest, device=device, num_threads=num_threads)
    return _classifier_from_manifest(
        folder, manifest, device=device, num_threads=num_threads, inter_op_threads=inter_op_threads
    )


def load_classifier(
    path: str | Path,
    *,
    device: str | None = None,
    num_threads: int | None = None,
    inter_op_threads: int | None = None,
    verify: bool = True,
) -> Predictor:
    """Load a text or image classification package into a ``Predictor``.

    Args are those of ``load``.

    Raises:
        PackageError: the package is missing, incomplete or altered, or holds another task
            (the message names it).
    """
    folder = Path(path)
    manifest = read_manifest(folder, verify=verify)
    require_task(folder, manifest, CLASSIFIER_TASKS)
    return _classifier_from_manifest(
        folder, manifest, device=device, num_threads=num_threads, inter_op_threads=inter_op_threads
    )


def _classifier_from_manifest(
    folder: Path,
    manifest: dict[str, Any],
    *,
    device: str | None,
    num_threads: int | None,
    inter_op_threads: int | None,
) -> Predictor:
    preprocessor = make_preprocessor(folder, manifest)
    fmt = manifest.get("format")
    if fmt == "torch":
        import torch

        from kiln.runtime.weights import load_torch_model, pick_device

        if num_threads:
            torch.set_num_threads(num_threads)
        dev = pick_device(device)
        engine: Engine = TorchEngine(load_torch_model(folder, manifest), dev)
    elif fmt == "onnx":
        from kiln.runtime.onnx_engine import OnnxEngine

        engine = OnnxEngine(
            packaged_file(folder, manifest, manifest["architecture"]["file"]),
            device=device,
            intra_op_threads=num_threads,
            inter_op_threads=inter_op_threads,
        )
    else:
        raise PackageError(f"{folder}: unsupported package format {fmt!r}")
    return Predictor(path=folder, manifest=manifest, preprocessor=preprocessor, engine=engine)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
