"""SmolLM2 converted from its installed GGUF file: once, by one of two processes asking at once, and usable.

The conversion is the session fixture ``smollm2_conversion`` (tests/smollm2.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kiln.runtime.pretrained_lm import PRETRAINED_LMS, RECORD_FILE
from tests.smollm2 import NAME, Conversion

# sha256 of the dequantized weights: a change in the conversion's math changes it.
WEIGHTS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"

pytestmark = pytest.mark.slow


def test_two_processes_asking_at_once_convert_once(smollm2_conversion: Conversion) -> None:
    for run in smollm2_conversion.runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == str(smollm2_conversion.folder)
    assert sum("converted pretrained model smollm2-135m in" in run.stderr for run in smollm2_conversion.runs) == 1
    # One folder; the lock file stays; the dead conversion's staging folder is gone.
    assert sorted(p.name for p in smollm2_conversion.home.iterdir()) == [f".{NAME}.lock", NAME]


def test_converted_folder_holds_a_checkpoint_recorded_by_hash(smollm2_conversion: Conversion) -> None:
    record = json.loads((smollm2_conversion.folder / RECORD_FILE).read_text())
    assert record["source"]["sha256"] == PRETRAINED_LMS[NAME].gguf_sha256
    assert set(record["files"]) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens.json",
    }
    assert record["files"]["model.safetensors"] == WEIGHTS_SHA256
    config = json.loads((smollm2_conversion.folder / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["max_position_embeddings"]) == ("llama", 49152, 8192)
    assert "quantization_config" not in config
    special = json.loads((smollm2_conversion.folder / "special_tokens.json").read_text())
    assert (special["bos_token"], special["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_tokenizer_json_gives_the_gguf_tokenizer_ids(smollm2_conversion: Conversion) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    lm = PRETRAINED_LMS[NAME]
    spec = importlib.util.find_spec(lm.package)
    assert spec is not None and spec.submodule_search_locations
    installed = Path(spec.submodule_search_locations[0])
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(installed), gguf_file=lm.gguf_file)
    tokenizer = Tokenizer.from_file(str(smollm2_conversion.folder / "tokenizer.json"))
    texts = [
        "What is the capital of France?",
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "  leading spaces, tabs\tand\nnewlines  ",
        "accents é ü ß, CJK 中文, emoji 🙂🚀, code: def f(x): return x**2",
        "",
    ]
    for text in texts:
        ids = tokenizer.encode(text).ids
        assert ids == gguf_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_greedy_answer_through_the_chat_template_names_paris(smollm2_conversion: Conversion) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from kiln.data.chat import render_chat

    folder = smollm2_conversion.folder
    special = json.loads((folder / "special_tokens.json").read_text())
    prompt = render_chat(
        (folder / "chat_template.jinja").read_text(),
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        special_tokens=special,
    )
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos_id = tokenizer.token_to_id(special["eos_token"])
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id)
    answer = tokenizer.decode(out[0, ids.shape[1] :].tolist())
    assert "Paris" in answer, answer
