import json
from pathlib import Path

import kiln.compress
import kiln.train
from kiln.config import parse_recipe
from kiln.runtime import load
from tests.helpers import tiny_text_recipe


def test_mean_pooling_model_trains_loads_and_exports(tmp_path: Path) -> None:
    raw = tiny_text_recipe(tmp_path / "run", max_steps=3)
    raw["model"]["pooling"] = "mean"
    result = kiln.train.run(parse_recipe(raw))
    config = json.loads((result.package_dir / "config.json").read_text())
    assert config["kiln_pooling"] == "mean"
    predictor = load(result.package_dir)
    assert type(predictor.engine.model).__name__ == "MeanPoolingBertForSequenceClassification"
    outputs = predictor.predict(["a fine film", "a dreadful bore"])
    assert [set(o["scores"]) for o in outputs] == [{"fresh", "rotten"}] * 2

    written = kiln.compress.run(result.package_dir, output_dir=tmp_path / "onnx", steps=["onnx"])
    onnx_package = written.packages[0]
    manifest = json.loads((onnx_package / "kiln.json").read_text())
    assert manifest["format"] == "onnx"
    onnx_outputs = load(onnx_package).predict(["a fine film", "a dreadful bore"])
    for a, b in zip(outputs, onnx_outputs, strict=True):
        assert a["label"] == b["label"]
