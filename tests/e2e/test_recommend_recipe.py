"""``kiln run recipes/recommend.yaml`` at small scale: train, package, rank the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, kiln_cli

# Test NDCG@10 of the popularity baseline on MovieLens-100k (deterministic: counts only).
POPULARITY_NDCG_AT_10 = 0.0330

pytestmark = pytest.mark.slow


def test_recommend_recipe_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kiln_cli(
        "run", str(ROOT / "recipes" / "recommend.yaml"), "train.max_steps=20", f"train.output_dir={out}"
    )
    assert result.returncode == 0, result.stderr
    assert "ndcg@10" in result.stdout
    report = json.loads((next(out.glob("eval-*")) / "report.json").read_text())
    assert report["task"] == "recommendation"
    assert report["n"] == 943 and report["items"] == 1682
    assert report["data_fingerprint_matches"] is True
    for key in ("hr@10", "ndcg@10", "recall@20", "coverage@10"):
        assert 0.0 <= report[key] <= 1.0
    manifest = json.loads((next(out.glob("train-*")) / "package" / "kiln.json").read_text())
    assert manifest["task"] == "recommendation"
    assert {"users.csv", "items.csv", "seen.csv", "model.safetensors"} <= set(manifest["files"])


def test_recommend_recipe_popularity_baseline_matches_recorded_ndcg(tmp_path: Path) -> None:
    out = tmp_path / "pop"
    result = kiln_cli(
        "run", str(ROOT / "recipes" / "recommend.yaml"), "recommend.model=popularity", f"train.output_dir={out}"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((next(out.glob("eval-*")) / "report.json").read_text())
    assert report["ndcg@10"] == pytest.approx(POPULARITY_NDCG_AT_10, abs=1e-4)
