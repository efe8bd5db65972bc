"""The generation recipes end to end: ``kiln run recipes/chat.yaml`` fine-tunes SmolLM2 with LoRA,
quantizes it, evaluates, registers and promotes, and ``kiln predict`` streams its answer; the GPT
pretraining recipe runs on one process and on two. Overrides keep each run to a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.registry import Registry
from kiln.runtime.pretrained_lm import MODELS_ENV
from tests.helpers import ROOT, kiln_cli
from tests.smollm2 import Conversion

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KILN_DATABASE_URL", raising=False)
    monkeypatch.delenv("KILN_ARTIFACTS_URL", raising=False)
    monkeypatch.setenv("KILN_USER", "tester")
    return tmp_path / "home"


QUICK = [
    "train.max_steps=2",
    "train.batch_size=4",
    "train.progress=false",
    "lm.sequence_length=64",
    "lm.eval_prompts=2",
    "lm.latency_new_tokens=4",
    "eval.latency_runs=1",
]


def test_chat_recipe_runs_registers_promotes_and_streams_an_answer(
    tmp_path: Path, home: Path, smollm2_conversion: Conversion, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's converted SmolLM2, so that a fresh environment converts it once, not twice.
    monkeypatch.setenv(MODELS_ENV, str(smollm2_conversion.home))
    done = kiln_cli(
        "run",
        str(ROOT / "recipes" / "chat.yaml"),
        *QUICK,
        "data.max_examples=120",
        "compress.eval_samples=8",
        "compress.quantize.calibration_samples=8",
        "--json",
    )

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    with Registry() as registry:
        versions = registry.list_versions("chat")
        assert [(v.version, v.precision) for v in versions] == [(1, "fp32"), (2, "int8")]
        lineage = registry.lineage("chat@2")
        assert lineage.root.ref == "chat@1"
        for version in versions:
            assert {"perplexity", "rouge_l", "exact_match", "tpot_ms", "ttft_ms"} <= set(version.metrics)
    assert summary["promote_reason"]
    package = Path(summary["packages"][-1]["path"])

    answer = kiln_cli("predict", str(package), "What is the capital of France?", "--max-new-tokens", "24")

    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout, answer.stdout


@pytest.mark.parametrize("processes", [1, 2])
def test_gpt_pretrain_recipe_trains_on_one_and_two_processes(tmp_path: Path, home: Path, processes: int) -> None:
    overrides = [*QUICK, "model.size=tiny", "model.vocab_size=500", "data.max_examples=300"]

    done = kiln_cli(
        "train", str(ROOT / "recipes" / "gpt-pretrain.yaml"), *overrides, "--nproc-per-node", str(processes)
    )

    assert done.returncode == 0, done.stderr
    manifest = json.loads((home / "runs" / "gpt-pretrain" / "package" / "kiln.json").read_text())
    assert manifest["task"] == "text-generation"
    assert manifest["lineage"]["settings"]["world_size"] == processes
    assert manifest["data"]["origin"].startswith("wiki_summaries")
    assert manifest["metrics"]["validation"]["perplexity"] > 1
