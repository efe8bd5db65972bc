from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from kiln.monitor.drift import ColumnDrift, categorical_drift, histogram_drift, numeric_drift
from kiln.monitor.predlog import LoggedInput, PredictionLog
from kiln.monitor.window import evaluate_window
from kiln.runtime import load_classifier
from kiln.runtime.profile import build_profile


@pytest.mark.parametrize("reference_rows", [200, 1000, 5000])
def test_drift_numeric_decides_by_ks_at_any_reference_size(reference_rows: int) -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, reference_rows)
    calm = numeric_drift("x", ref, rng.normal(0, 1, 200))
    shifted = numeric_drift("x", ref, rng.normal(1, 1, 200))
    assert calm.method == shifted.method == "ks" and not calm.is_drifted
    assert shifted.is_drifted and shifted.score == shifted.stats["ks_p"] < 0.05
    assert shifted.stats["psi"] > 0.2 and shifted.stats["wasserstein"] > 0.5 > calm.stats["wasserstein"]


def test_drift_categorical_chi2_keeps_false_alarms_at_five_percent() -> None:
    # Windows drawn from the reference's own distribution: a test that took the reference's
    # shares as exact flags about 13% of them (500-row windows against 1,000 rows).
    rng = np.random.default_rng(2)
    shares = [0.5, 0.3, 0.2]
    keys = ["a", "b", "c"]
    alarms = 0
    for _ in range(400):
        ref = dict(zip(keys, rng.multinomial(1000, shares).tolist(), strict=True))
        cur = dict(zip(keys, rng.multinomial(500, shares).tolist(), strict=True))
        col = categorical_drift("prediction", ref, cur)
        assert col.method == "chi2"
        alarms += col.is_drifted
    assert alarms / 400 <= 0.075


def test_drift_categorical_chi2_detects_shift_and_ignores_unseen_categories() -> None:
    shifted = categorical_drift("p", {"a": 1500, "b": 1500}, {"a": 90, "b": 10})
    assert shifted.method == "chi2" and shifted.is_drifted and shifted.stats["js"] > 0.1
    # A label the model never predicted on either side leaves the test defined.
    calm = categorical_drift("p", {"a": 240, "b": 0}, {"a": 150})
    assert calm.score == 1.0 and not calm.is_drifted


def test_drift_histogram_decides_by_jensen_shannon_distance() -> None:
    # 150 images of 64 pixels: a 2% move of pixel shares is certain to a chi² test on pixel
    # counts, yet no drift; a dimmed picture is.
    ref = {"dark": 6000, "mid": 2000, "bright": 1600}
    nudged = histogram_drift("pixel_intensity", ref, {"dark": 6200, "mid": 1900, "bright": 1500})
    assert nudged.method == "jensen_shannon" and not nudged.is_drifted
    assert categorical_drift("pixel_intensity", ref, {"dark": 6200, "mid": 1900, "bright": 1500}).is_drifted
    dimmed = histogram_drift("pixel_intensity", ref, {"dark": 8000, "mid": 1400, "bright": 200})
    assert dimmed.is_drifted and dimmed.score == dimmed.stats["js"] >= 0.1


def test_drift_window_of_images_reaches_pixel_histogram_distance(image_package: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits().images.astype(np.float32).reshape(-1, 1, 8, 8)
    predictor = load_classifier(image_package)
    profile = build_profile(predictor, list(digits[:300]))

    def pixels(images: np.ndarray) -> ColumnDrift:
        rows = [
            LoggedInput(time.time(), "digits", 1, f"r{i}", 0, image, "0", 0.5, 0.001) for i, image in enumerate(images)
        ]
        report = evaluate_window(rows, model="digits", version=1, profile=profile, predictor=predictor)
        [column] = [c for c in report.columns if c.column == "pixel_intensity"]
        return column

    calm = pixels(digits[300:450])
    assert calm.method == "jensen_shannon" and not calm.is_drifted
    assert pixels(digits[300:450] * 0.6).is_drifted


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
