"""Chat templates: conversations rendered to text the way transformers renders them, and the
token ids plus loss mask that supervised fine-tuning trains on.

Templates are Jinja run in jinja2's immutable sandbox with the settings of transformers'
``apply_chat_template`` (trim_blocks, lstrip_blocks, loop controls, ``raise_exception``), so a
model's own template (for example SmolLM2's) renders here exactly as it does there.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kiln.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from kiln.data.corpus import Conversation

# For GPTs trained here, whose BPE holds these tokens (kiln.data.tokenizer.GPT_SPECIAL_TOKENS):
# "<|user|>\n{content}\n<|assistant|>\n{content}<|endoftext|>", one block per message; an
# assistant message ends with end-of-text so the model learns where to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<|endoftext|>' }}{% else %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool,
    special_tokens: Mapping[str, str],
) -> str:
    """Render ``messages`` through a Jinja chat template, as transformers' ``apply_chat_template``.

    Args:
        template: the chat template (Jinja source).
        messages: ``{"role": ..., "content": ...}`` mappings, in order.
        add_generation_prompt: end with the header that opens the assistant's reply.
        special_tokens: template variables such as ``bos_token`` and ``eos_token``.

    Raises:
        DataError: the template does not compile, or refuses the conversation (``raise_exception``).
    """
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=[dict(message) for message in messages],
            add_generation_prompt=add_generation_prompt,
            **special_tokens,
        )
    except jinja2.TemplateError as exc:
        raise DataError(f"the chat template cannot render the conversation: {exc}") from None


def sft_tokens(
    tokenizer: Tokenizer,
    template: str,
    conversation: Conversation,
    *,
    sequence_length: int,
    special_tokens: Mapping[str, str],
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a rendered conversation and the loss mask of supervised fine-tuning.

    The last message is the assistant's reference. The mask is 1 on the tokens of that reply as
    the template renders it (its end token included: ``special_tokens["eos_token"]`` is added
    when the template does not close the reply with it), 0 on the prompt before it. When prompt
    and reply exceed ``sequence_length``, the prompt loses tokens from the left; a reply too long
    to leave the prompt its last ``min(prompt, sequence_length // 2)`` tokens is cut on the right.

    Returns:
        (ids, mask): int64 arrays of the same length, at most ``sequence_length``.

    Raises:
        DataError: the conversation has no message before the reply, does not end with the
            assistant, or the template renders the prompt differently inside the full chat.
    """
    if len(conversation) < 2 or conversation[-1]["role"] != "assistant":
        roles = [message["role"] for message in conversation]
        raise DataError(f"a conversation needs a prompt and a final assistant message, got roles {roles}")
    prompt = render_chat(template, conversation[:-1], add_generation_prompt=True, special_tokens=special_tokens)
    full = render_chat(template, conversation, add_generation_prompt=False, special_tokens=special_tokens)
    if not full.startswith(prompt):
        raise DataError(
            "the chat template renders the prompt differently inside the whole conversation, so the "
            f"reply cannot be told apart: prompt {prompt[-80:]!r}, whole {full[: len(prompt) + 20][-100:]!r}"
        )
    reply = full[len(prompt) :]
    eos = special_tokens.get("eos_token")
    if eos and eos not in reply:
        reply += eos
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    reply_ids = tokenizer.encode(reply, add_special_tokens=False).ids
    prompt_ids, reply_ids = _fit(prompt_ids, reply_ids, sequence_length)
    ids = np.array(prompt_ids + reply_ids, dtype=np.int64)
    mask = np.concatenate([np.zeros(len(prompt_ids), dtype=np.int64), np.ones(len(reply_ids), dtype=np.int64)])
    return ids, mask


def _fit(prompt: list[int], reply: list[int], length: int) -> tuple[list[int], list[int]]:
    """Cut the prompt from the left, and the reply from the right only if it leaves too little prompt."""
    if len(prompt) + len(reply) <= length:
        return prompt, reply
    kept_prompt = min(len(prompt), length // 2)
    if len(reply) <= length - kept_prompt:
        return prompt[len(prompt) - (length - len(reply)) :], reply
    return prompt[len(prompt) - kept_prompt :], reply[: length - kept_prompt]


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as exc:
        raise DataError(f"the chat template does not compile: {exc}") from None


def with_system(conversation: Sequence[Mapping[str, str]], system_prompt: str | None) -> Conversation:
    """The conversation with ``system_prompt`` as its first message, unless it has a system message."""
    messages = tuple(dict(m) for m in conversation)
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return ({"role": "system", "content": system_prompt}, *messages)


def token_rows(
    tokenizer: Tokenizer,
    items: Sequence[str] | Sequence[Sequence[Mapping[str, str]]],
    *,
    sequence_length: int,
    eos_token: str,
    chat_template: str | None,
    special_tokens: Mapping[str, str],
    system_prompt: str | None = None,
    is_short_row_allowed: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token rows and their loss masks, as language-model training, evaluation and compression
    all read text.

    Documents (strings) are joined with ``eos_token`` and cut into rows of ``sequence_length``,
    every token a target; conversations become one row each through ``chat_template``, after
    ``system_prompt`` unless they bring their own, with only the response tokens as targets.

    Args:
        is_short_row_allowed: documents holding fewer tokens than one row make one shorter row
            instead of an error (scoring a small sample).

    Raises:
        DataError: documents too short for one row; conversations without a chat template.
    """
    from kiln.data.tokenizer import pack_documents

    if all(isinstance(item, str) for item in items):
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(f"the tokenizer has no end-of-text token {eos_token!r}")
        encoded = [e.ids for e in tokenizer.encode_batch([str(d) for d in items], add_special_tokens=False)]
        if is_short_row_allowed:
            sequence_length = min(sequence_length, sum(len(ids) + 1 for ids in encoded))
        packed = pack_documents(encoded, sequence_length, eos_id)
        return list(packed), [np.ones(sequence_length, dtype=bool)] * len(packed)
    if chat_template is None:
        raise DataError("conversations need a chat template to become token rows, and there is none")
    rows, masks = [], []
    for conversation in items:
        ids, mask = sft_tokens(
            tokenizer,
            chat_template,
            with_system(conversation, system_prompt),  # type: ignore[arg-type]
            sequence_length=sequence_length,
            special_tokens=special_tokens,
        )
        rows.append(ids)
        masks.append(mask)
    return rows, masks
