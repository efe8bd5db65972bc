"""The store interface and reference parsing."""

from __future__ import annotations

import pytest

from kiln.registry.errors import BadReferenceError
from kiln.registry.references import parse_reference
from kiln.registry.store import RegistryStore


def test_store_interface_refuses_incomplete_implementation() -> None:
    class Partial(RegistryStore):
        def list_models(self):  # type: ignore[no-untyped-def]
            return []

    with pytest.raises(TypeError, match="abstract"):
        Partial()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("ref", "version", "alias"),
    [("sentiment@3", 3, None), ("sentiment@production", None, "production"),
     ("a.b-c_d@latest", None, "latest")],
)
def test_reference_parses_version_and_alias(
    ref: str, version: int | None, alias: str | None
) -> None:
    parsed = parse_reference(ref)
    assert (parsed.version, parsed.alias, str(parsed)) == (version, alias, ref)


@pytest.mark.parametrize("ref", ["sentiment", "@3", "a@", "a@b@c", "a b@1", "a@pro duction"])
def test_reference_refuses_malformed(ref: str) -> None:
    with pytest.raises(BadReferenceError, match="name@version"):
        parse_reference(ref)
