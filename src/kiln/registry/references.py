"""Model references: ``name@3`` (a version), ``name@production`` (an alias), ``name@latest``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.registry.errors import BadReferenceError

LATEST = "latest"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}"
_REFERENCE = re.compile(rf"^(?P<name>{_NAME})@(?P<selector>[A-Za-z0-9_-]+)$")
_MODEL_NAME = re.compile(rf"^{_NAME}$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference: a model name with a version number or an alias."""

    model: str  # model name
    version: int | None  # version number, or None when ``alias`` is set
    alias: str | None  # alias name (``latest`` means the newest version)

    def __str__(self) -> str:
        return f"{self.model}@{self.version if self.version is not None else self.alias}"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise ``BadReferenceError``."""
    if not _MODEL_NAME.match(name):
        raise BadReferenceError(
            f"model name must be letters, digits, '.', '_' or '-' (starting with a letter or "
            f"digit, at most 200 characters), got {name!r}"
        )
    return name


def parse_reference(ref: str) -> Reference:
    """Parse ``name@version`` or ``name@alias``.

    Raises:
        BadReferenceError: ``ref`` has another shape.
    """
    match = _REFERENCE.match(ref.strip())
    if match is None:
        raise BadReferenceError(
            f"{ref!r} is not a model reference: expected name@version (e.g. sentiment@3) "
            "or name@alias (e.g. sentiment@production)"
        )
    selector = match["selector"]
    if selector.isdigit():
        return Reference(match["name"], int(selector), None)
    return Reference(match["name"], None, selector)


def is_reference(ref: str) -> bool:
    """Whether ``ref`` has the shape of a model reference."""
    return _REFERENCE.match(ref.strip()) is not None
