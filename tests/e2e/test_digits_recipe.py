"""``kiln run recipes/digits.yaml`` at small scale, then the package served with PNG input."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiln.serve.config import ModelConfig, ServeConfig
from tests.helpers import ROOT, kiln_cli
from tests.integration.serve_harness import serving

pytestmark = pytest.mark.slow


def test_digits_recipe_runs_and_its_package_classifies_png_digits(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kiln_cli(
        "run",
        str(ROOT / "recipes" / "digits.yaml"),
        "data.max_examples=400",
        "train.epochs=1",
        "train.num_threads=1",
        "train.progress=false",
        f"train.output_dir={out}",
    )
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    assert json.loads((next(out.glob("eval-*")) / "report.json").read_text())["n"] > 0

    import kiln.data
    from kiln.config import load_recipe

    dataset = kiln.data.run(load_recipe(ROOT / "recipes" / "digits.yaml", ["data.max_examples=400"]))
    image = dataset.test.inputs[0].reshape(28, 28).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").resize((56, 56)).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    config = ServeConfig(models=[ModelConfig(name="digits", versions={1: str(next(out.glob("train-*")) / "package")})])
    with serving(config) as server:
        as_png = server.post("/v1/models/digits:predict", {"inputs": [encoded]})
        as_array = server.post("/v1/models/digits:predict", {"inputs": [image.tolist()]})
        wrong = server.post("/v1/models/digits:predict", {"inputs": [np.zeros((8, 8)).tolist()]})
    assert as_png.status_code == 200 and as_array.status_code == 200, (as_png.text, as_array.text)
    assert as_png.json()["outputs"][0]["label"] in dataset.label_names
    assert wrong.status_code == 400 and "expected 784 values" in wrong.json()["error"]
