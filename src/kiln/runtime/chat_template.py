"""Render chat messages through a package's Jinja chat template, as transformers does.

The environment is transformers' ``apply_chat_template`` one: Jinja's immutable sandbox (a
template from a package cannot reach Python objects), ``trim_blocks`` and ``lstrip_blocks``,
the loop-control extension, a ``tojson`` filter and ``raise_exception``; the template sees
``messages``, ``add_generation_prompt`` and the special tokens by name (``bos_token``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from kiln.errors import PackageError
from kiln.runtime.preprocessing import InputError

_ROLES = ("system", "user", "assistant")


def render_messages(
    template: str,
    messages: Sequence[Mapping[str, str]],
    *,
    special_tokens: Mapping[str, str],
    origin: Path,
) -> str:
    """The prompt text for ``messages`` with the assistant's turn opened.

    Raises:
        InputError: a message that is not ``{"role": system|user|assistant, "content": str}``.
        PackageError: the template fails to render (the message names ``origin``).
    """
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    checked = [_checked_message(i, m) for i, m in enumerate(messages)]
    if not checked:
        raise InputError("the chat prompt holds no messages")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(messages=checked, add_generation_prompt=True, **special_tokens)
    except jinja2.TemplateError as exc:
        raise PackageError(f"{origin}: the chat template failed on these messages: {exc}") from exc


def _checked_message(index: int, message: object) -> dict[str, str]:
    if not isinstance(message, Mapping):
        raise InputError(f"message {index} must be a mapping with role and content, got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in _ROLES:
        raise InputError(f"message {index}: role must be one of {', '.join(_ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise InputError(f"message {index}: content must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise(message: str) -> NoReturn:
    import jinja2

    raise jinja2.TemplateError(message)
