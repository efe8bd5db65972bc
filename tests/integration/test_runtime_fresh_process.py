"""A trained package loads in a fresh process with only kiln.runtime and predicts from raw text."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.config import parse_recipe
from kiln.train import run as train_run
from tests.helpers import tiny_text_recipe

SCRIPT = """
import json, sys
from kiln.runtime import load
predictor = load(sys.argv[1])
results = predictor.predict(["a warm, funny and moving film", "tedious and badly acted"])
stages = sorted(m for m in sys.modules if m.split(".")[:2] in (["kiln", "train"], ["kiln", "data"],
                ["kiln", "serve"], ["kiln", "evaluate"], ["kiln", "compress"], ["kiln", "registry"]))
print(json.dumps({"results": results, "stages": stages}))
"""


@pytest.mark.slow
def test_runtime_loads_trained_package_in_fresh_process(tmp_path: Path) -> None:
    trained = train_run(parse_recipe(tiny_text_recipe(tmp_path / "run", max_steps=5)))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(trained.package_dir)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["stages"] == []  # nothing but the runtime was needed
    assert [set(r["scores"]) for r in out["results"]] == [{"fresh", "rotten"}] * 2
    assert all(r["label"] in ("fresh", "rotten") for r in out["results"])
