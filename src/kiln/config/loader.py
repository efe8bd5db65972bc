"""Load a YAML recipe, apply ``key.sub=value`` overrides, and validate it into a ``Recipe``.

Every refusal names the file, the key path, the value received and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kiln.config.schema import Recipe
from kiln.errors import ConfigError


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply overrides and validate.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    raw = apply_overrides(read_yaml_mapping(path, "recipe file"), overrides or [])
    return parse_recipe(raw, source=str(path))


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of sections, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied; values are parsed as YAML."""
    result = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected key.sub=value, e.g. train.epochs=1")
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def parse_recipe(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a mapping into a ``Recipe``, turning pydantic errors into one clear message."""
    return Recipe.parse(raw, source=source)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
