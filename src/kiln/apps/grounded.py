"""Generated support answers: the chat package a support recipe names, checked and recorded.

A support package whose recipe names ``support.chat_package`` answers in the chat model's own
words, grounded in the ``top_k`` nearest FAQ entries (``kiln.runtime.grounding`` builds the
prompt). The chat package is resolved and checked when the support package is built, so a
missing or unsuitable one fails the build with a message naming the setting; the manifest
records the reference, the digest of the package it resolved to (lineage) and what the server
loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config.schema import SupportConfig
from kiln.errors import ConfigError, KilnError


@dataclass(frozen=True)
class ChatPackage:
    """The text-generation package a support package answers with."""

    reference: str  # as the recipe gives it: name@alias, name@version or a folder
    source: str  # what the server loads when nobody serves it: the registry reference or the folder's absolute path
    name: str  # the name it is served under (the reference's name, else the package's own)
    digest: str  # that package's content digest


def resolve_chat_package(reference: str) -> ChatPackage:
    """Resolve ``support.chat_package`` and check that it is a chat model (with a chat template).

    Raises:
        ConfigError: the reference does not resolve, or the package is not a text-generation
            package with a chat template.
    """
    from kiln.registry import resolve_reference
    from kiln.runtime.package import package_digest, read_manifest

    field = f"support.chat_package: {reference!r}"
    try:
        path = Path(resolve_reference(reference))
        manifest = read_manifest(path)
    except KilnError as exc:
        raise ConfigError(f"{field} cannot be used: {exc}") from None
    task = manifest.get("task")
    if task != "text-generation":
        raise ConfigError(f"{field} is a {task} package; answers need a text-generation package")
    if not (manifest.get("preprocessing") or {}).get("chat_template_file"):
        raise ConfigError(f"{field} has no chat template, so it cannot read the grounded chat prompt")
    # resolve_reference takes an existing folder as it is; anything else resolved as a reference.
    is_registry = not Path(reference).is_dir()
    name = reference.split("@", 1)[0] if is_registry else str(manifest.get("name") or path.name)
    return ChatPackage(
        reference=reference,
        source=reference if is_registry else str(path.resolve()),
        name=name,
        digest=package_digest(manifest),
    )


def grounding_section(cfg: SupportConfig, chat: ChatPackage) -> dict[str, Any]:
    """The ``app.grounding`` section of a support package's manifest: how answers are generated."""
    return {
        "chat": {"reference": chat.reference, "source": chat.source, "name": chat.name, "digest": chat.digest},
        "top_k": cfg.top_k,
        "prompt": cfg.grounding_prompt,
        "max_answer_tokens": cfg.max_answer_tokens,
        "temperature": cfg.answer_temperature,
    }
