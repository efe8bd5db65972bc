"""``kiln run recipes/finance.yaml`` at small scale, then ``kiln replay`` through the served model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kiln.serve.config import ModelConfig, ServeConfig
from tests.helpers import ROOT, SHARED_DATA, kiln_cli
from tests.integration.serve_harness import serving

pytestmark = pytest.mark.slow


def test_finance_recipe_runs_and_replay_streams_headlines_through_the_server(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny = [
        "model.kind=bert", "model.size=tiny", "model.vocab_size=500", "model.max_length=32",
        "data.max_examples=600", "train.epochs=1", "train.lr=1e-3", "train.precision=fp32",
        "train.num_threads=1", "train.progress=false", f"train.output_dir={out}",
    ]  # fmt: skip
    result = kiln_cli("run", "recipes/finance.yaml", *tiny, cwd=ROOT)
    assert result.returncode == 0, result.stderr

    frame = pd.read_csv(SHARED_DATA / "financial_phrasebank" / "all-data.csv", encoding="latin-1")
    headlines = tmp_path / "headlines.csv"
    frame.head(100).to_csv(headlines, index=False)
    config = ServeConfig(models=[ModelConfig(name="finance", versions={1: str(next(out.glob("train-*")) / "package")})])
    with serving(config) as server:
        replayed = kiln_cli(
            "replay", str(headlines), "--url", server.url, "--recipe", "recipes/finance.yaml", "--column", "content",
            *tiny, "monitor.window_size=20", "monitor.margin=0.01", cwd=ROOT,
        )  # fmt: skip
        bad_column = kiln_cli("replay", str(headlines), "--url", server.url, "--recipe", "recipes/finance.yaml",
                              *tiny, cwd=ROOT)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert "replaying 100 headlines" in replayed.stdout
    assert "5 windows" in replayed.stdout and "window 5: negative" in replayed.stdout
    assert bad_column.returncode == 2 and "column 'text' not found" in bad_column.stderr
    unreachable = kiln_cli("replay", str(headlines), "--url", "http://127.0.0.1:9", "--column", "content",
                           "--recipe", "recipes/finance.yaml", *tiny, cwd=ROOT)  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach the server" in unreachable.stderr
