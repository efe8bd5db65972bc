"""``Section``: the one base of Kiln's typed settings (recipes, serve and monitor configs, search budgets).

A section declares every default with a one-line comment, refuses unknown keys, and is frozen.
Values from a user (a YAML file, overrides, command-line flags) go through ``parse``, which turns
every validation problem into one ``ConfigError`` naming each key, the value received and what is
allowed. (A custom constructor would do the same for direct construction, but pydantic then calls
it for every nested section too, so nested problems would lose their key path.)
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, ClassVar, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from kiln.errors import ConfigError


class Section(BaseModel):
    """A frozen block of settings; ``parse`` refuses bad values with a ``ConfigError``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # What refusals call a whole mapping of this class ("recipe", "serve config"...).
    config_kind: ClassVar[str] = "settings"
    # Fields whose values refusals never quote (a webhook URL may carry a token).
    unquoted_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, source: str) -> Self:
        """Validate a mapping read from ``source`` (a file name, or where the values came from).

        Raises:
            ConfigError: every problem, one per line, as ``key.sub: what is wrong (got value)``.
        """
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe_errors(cls, exc, source=source)) from None


def describe_errors(model: type[BaseModel], exc: ValidationError, *, source: str) -> str:
    """One message for all of a validation's errors: ``source: invalid KIND:`` then a line per key."""
    kind = getattr(model, "config_kind", "settings")
    lines = [_describe(model, err) for err in exc.errors()]
    return f"{source}: invalid {kind}:\n  " + "\n  ".join(lines)


def _describe(model: type[BaseModel], err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        section = _model_at(model, loc[:-1])
        allowed = sorted(section.model_fields) if section is not None else []
        return f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    section = _model_at(model, loc[:-1])
    if section is not None and loc and loc[-1] in getattr(section, "unquoted_fields", ()):
        return f"{key}: {err['msg']}"
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"{key}: {err['msg']} (got {shown})"


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The section class at a key path (list indices and mapping keys step into their items)."""
    node: Any = model
    for part in loc:
        if _is_model(node):
            field = node.model_fields.get(part)
            node = _item_type(field.annotation) if field is not None else None
        elif get_origin(node) in (list, tuple, dict):
            node = _item_type(get_args(node)[-1] if get_args(node) else None)
        else:
            return None
    return node if _is_model(node) else None


def _item_type(annotation: Any) -> Any:
    """The model of an optional section (``PromoteConfig | None``), else ``annotation``."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)
