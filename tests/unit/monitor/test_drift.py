from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from kiln.monitor.drift import categorical_drift, numeric_drift
from kiln.monitor.predlog import PredictionLog


def test_drift_small_reference_uses_ks_and_detects_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 500)
    assert numeric_drift("x", ref, rng.normal(0, 1, 200)).is_drifted is False
    shifted = numeric_drift("x", ref, rng.normal(1, 1, 200))
    assert shifted.method == "ks" and shifted.is_drifted and shifted.stats["psi"] > 0.2


def test_drift_large_reference_uses_distances() -> None:
    rng = np.random.default_rng(1)
    assert numeric_drift("x", rng.normal(0, 1, 2000), rng.normal(0, 1, 300)).method == "wasserstein"
    big = categorical_drift("p", {"a": 1500, "b": 1500}, {"a": 90, "b": 10})
    assert big.method == "jensen_shannon" and big.is_drifted
    small = categorical_drift("p", {"a": 50, "b": 50}, {"a": 52, "b": 48})
    assert small.method == "chi2" and not small.is_drifted


def test_predlog_retention_deletes_old_and_oversized_files(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, max_log_bytes=10_000, retention_s=60)
    folder = tmp_path / "predictions"
    folder.mkdir()
    for i in range(5):
        path = folder / f"part-{i}.parquet"
        path.write_bytes(b"x" * 4000)
        os.utime(path, (time.time() - (1000 if i == 0 else 10 - i),) * 2)
    log.enforce_retention()
    assert sorted(p.name for p in folder.iterdir()) == ["part-3.parquet", "part-4.parquet"]
