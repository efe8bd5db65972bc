"""``kiln run recipes/support.yaml`` at small scale, then ``/v1/apps/support:answer`` over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.helpers import ROOT, kiln_cli
from tests.integration.serve_harness import serving

FAQ = """question,answer
How do I reset my PIN?,Open the app and choose Card > Reset PIN.
My card has not arrived yet,Cards arrive within 5 working days; after that we send a new one.
Why was I charged a fee?,Transfers in a foreign currency carry a 0.5% fee.
"""

pytestmark = pytest.mark.slow


def test_support_recipe_runs_and_answers_or_hands_off_over_http(tmp_path: Path) -> None:
    faq = tmp_path / "faq.csv"
    faq.write_text(FAQ)
    out = tmp_path / "run"
    tiny = [
        "model.kind=bert", "model.size=tiny", "model.vocab_size=500", "model.max_length=32",
        "data.max_examples=800", "train.epochs=1", "train.lr=1e-3", "train.precision=fp32",
        "train.num_threads=1", "train.progress=false", f"train.output_dir={out}", f"support.faq_file={faq}",
    ]  # fmt: skip
    result = kiln_cli("run", "recipes/support.yaml", *tiny, "support.target_accuracy=0.01",
                      "support.min_answer_score=-1", cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "support app:" in result.stdout and "hand-off threshold" in result.stdout
    manifest = json.loads((out / "support" / "kiln.json").read_text())
    assert manifest["app"]["kind"] == "support" and {"faq.csv", "faq_embeddings.safetensors"} <= set(manifest["files"])

    from kiln.apps.support import build_support_package
    from kiln.config import load_recipe

    strict = load_recipe(
        ROOT / "recipes" / "support.yaml", [*tiny, "support.target_accuracy=1.0", "support.out_of_scope=null"]
    )
    build_support_package(strict, next(out.glob("train-*")) / "package", tmp_path / "strict")
    text = make_text_package(tmp_path / "plain")
    config = ServeConfig(
        models=[
            ModelConfig(name="support", versions={1: str(out / "support")}),
            ModelConfig(name="strict", versions={1: str(tmp_path / "strict")}),
            ModelConfig(name="plain", versions={1: str(text)}),
        ]
    )
    with serving(config) as server:
        answered = server.post("/v1/apps/support:answer", {"text": "How do I reset my PIN?"})
        handed_off = server.post("/v1/apps/strict:answer", {"text": "How do I reset my PIN?"})
        empty = server.post("/v1/apps/support:answer", {"text": "   "})
        missing = server.post("/v1/apps/support:answer", {})
        not_an_app = server.post("/v1/apps/plain:answer", {"text": "hello"})
        unknown = server.post("/v1/apps/nope:answer", {"text": "hello"})
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["handoff"] is False and body["answer"].startswith("Open the app")
    assert body["answer_score"] == pytest.approx(1.0, abs=1e-3) and 0 < body["confidence"] <= 1
    assert body["oos_threshold"] == manifest["app"]["out_of_scope"]["threshold"] and "oos_score" in body
    assert handed_off.status_code == 200 and handed_off.json()["handoff"] is True
    assert "answer" not in handed_off.json() and handed_off.json()["reason"] == "low_confidence"
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert missing.status_code == 422 and "text" in missing.json()["error"]
    assert not_an_app.status_code == 400 and "not a support app" in not_an_app.json()["error"]
    assert unknown.status_code == 404
