"""Feature encoding for recommendation towers: transforms, vocabularies, unknown values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kiln.runtime.towers import build_field_specs, encode_fields, transform_value


@pytest.mark.parametrize(
    ("transform", "value", "tokens"),
    [
        ("age_group", "24", ["18-24"]),
        ("age_group", 56, ["56+"]),
        ("age_group", "unknown", []),
        ("prefix1", "t8h1n", ["T"]),
        ("decade", "1995", ["1990s"]),
        ("tokens", "Action Comedy", ["Action", "Comedy"]),
        ("category", "", []),
    ],
)
def test_transform_value_maps_raw_values_to_tokens(transform: str, value: object, tokens: list[str]) -> None:
    assert transform_value(transform, value) == tokens


def test_encode_fields_gives_zero_for_unknown_values_and_normalised_bags() -> None:
    table = pd.DataFrame({"gender": ["F", "M"], "genres": ["Action Comedy", "Drama"]})
    specs = build_field_specs(table, [("gender", "category"), ("genres", "tokens")])
    cats, bags = encode_fields(specs, [{"gender": "M", "genres": "Action Comedy"}, {"gender": "X", "genres": "Horror"}])
    assert cats.tolist() == [[2], [0]]
    np.testing.assert_allclose(bags, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
