"""A served classifier keeps one engine per thread count and runs each batch on the one it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.serve.models import load_served_model


class RecordingEngine:
    """Wraps a real engine and records the calls it gets (a stand-in to observe routing)."""

    def __init__(self, engine: Any, calls: list[int], threads: int) -> None:
        self.engine, self.calls, self.threads = engine, calls, threads

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        self.calls.append(self.threads)
        return np.asarray(self.engine(features))


def test_served_model_runs_each_batch_on_the_engine_of_its_thread_count(text_package: Path) -> None:
    served = load_served_model(
        name=None, version=1, source=str(text_package), device="cpu", num_threads=1, chunk_size=4,
        thread_counts=(1, 2),
    )  # fmt: skip
    assert sorted(served.engines) == [1, 2]
    calls: list[int] = []
    served.engines = {n: RecordingEngine(e, calls, n) for n, e in served.engines.items()}
    texts = ["a moving story", "dull and long"]
    wide, narrow = served.predict_batch(texts, 2), served.predict_batch(texts, 1)
    assert calls == [2, 1]
    for a, b in zip(wide, narrow, strict=True):
        assert a["label"] == b["label"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_served_model_refuses_a_thread_count_it_has_no_engine_for(text_package: Path) -> None:
    served = load_served_model(
        name=None, version=1, source=str(text_package), device="cpu", num_threads=1, chunk_size=4,
        thread_counts=(1,),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"engines for \[1\] intra-op threads, not 3"):
        served.predict_batch(["fine"], 3)


def test_load_served_model_loads_a_text_generation_package_for_the_openai_endpoints(tmp_path: Path) -> None:
    from kiln.runtime.preprocessing import InputError
    from kiln.serve.models import ServedGenerator
    from tests.helpers import tiny_generation_package

    package = tiny_generation_package(tmp_path / "gen")
    served = load_served_model(name=None, version=1, source=str(package), device="cpu", num_threads=1, chunk_size=4)
    assert isinstance(served, ServedGenerator)
    assert (served.name, served.kind, served.max_length) == ("gen", "generation", 64)
    with pytest.raises(InputError, match="is a text-generation model; use POST /v1/chat/completions"):
        served.check_inputs(["hi"])
