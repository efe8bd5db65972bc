"""Run an ONNX package with ONNX Runtime behind the same ``Engine`` interface as PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import PackageError

ONNX_NAME = "model.onnx"
EMBEDDING_OUTPUT = "embedding"


class OnnxEngine:
    """An ONNX Runtime ``InferenceSession``: features in, logits out.

    Only the inputs the graph declares are fed (a CNN graph ignores an ``attention_mask``),
    each cast to the element type the graph expects.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        device: str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if not model_path.is_file():
            raise PackageError(f"{model_path.parent}: ONNX model {model_path.name} is missing")
        self.model_path = model_path
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=_providers(device)
        )
        self.input_types: dict[str, Any] = {
            i.name: _NUMPY_TYPES.get(i.type, None) for i in self.session.get_inputs()
        }
        self.output_name: str = self.session.get_outputs()[0].name
        # Text graphs exported by Kiln also output the pooled embedding (out-of-scope scores read it).
        self.has_embedding = any(o.name == EMBEDDING_OUTPUT for o in self.session.get_outputs())

    def with_threads(self, threads: int) -> OnnxEngine:
        """This model with ``threads`` intra-op threads per call.

        ONNX Runtime fixes a session's intra-op thread pool when the session is built, so another
        count is another session of the same file (holding its own copy of the weights). A
        session on CUDA computes on the GPU whatever its CPU threads, so it is returned as is.
        """
        if threads == self.intra_op_threads or self.session.get_providers()[0] != "CPUExecutionProvider":
            return self
        return OnnxEngine(
            self.model_path,
            device=self.device,
            intra_op_threads=threads,
            inter_op_threads=self.inter_op_threads,
        )

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs the graph declares."""
        return list(self.input_types)

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], self._feed(features))
        return np.asarray(logits, dtype=np.float32)

    def logits_and_embedding(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the graph's ``embedding`` output from one run (None when the graph has none)."""
        if not self.has_embedding:
            return self(features), None
        logits, embedding = self.session.run([self.output_name, EMBEDDING_OUTPUT], self._feed(features))
        return np.asarray(logits, dtype=np.float32), np.asarray(embedding, dtype=np.float32)

    def _feed(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_types if name not in features]
        if missing:
            raise PackageError(
                f"the ONNX graph needs inputs {missing} that the preprocessor does not produce "
                f"(it produces {sorted(features)})"
            )
        return {
            name: features[name] if dtype is None else features[name].astype(dtype, copy=False)
            for name, dtype in self.input_types.items()
        }


_NUMPY_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _providers(device: str | None) -> list[str]:
    import onnxruntime as ort

    if device and device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PackageError(
                f"device {device!r} asked for, but this ONNX Runtime has no CUDA provider "
                f"(available: {ort.get_available_providers()})"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
