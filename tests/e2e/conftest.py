"""A sentiment model trained on Rotten Tomatoes snippets, served with monitoring on: shared by the
monitoring end-to-end tests, which stream held-back reviews and Guardian headlines to it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import tiny_text_recipe


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained package and the test split's inputs, which training never saw."""
    import kiln.data
    import kiln.train
    from kiln.config.schema import Recipe

    raw = tiny_text_recipe(tmp_path_factory.mktemp("sentiment-run"), epochs=1)
    raw["data"]["max_examples"] = 3000
    raw["model"].update(vocab_size=2000, max_length=64)  # room for whole reviews: lengths are not all cut
    recipe = Recipe.model_validate(raw)
    trained = kiln.train.run(recipe)
    return {"package": trained.package_dir, "held_back": list(kiln.data.run(recipe).test.inputs)}
