"""int8 embedding tables: a smaller recommendation package that ranks almost the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.compress.embeddings import quantize_embedding_tables
from kiln.compress.errors import CompressError
from kiln.runtime import load_recommender
from kiln.runtime.recommender import RecommendQuery


@pytest.fixture(scope="module")
def rec_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import kiln.train
    from kiln.config import parse_recipe

    out = tmp_path_factory.mktemp("rec")
    recipe = parse_recipe(
        {
            "name": "movies",
            "data": {"dataset": "movielens100k"},
            "recommend": {"model": "bpr-mf", "embedding_dim": 32},
            "train": {"epochs": 1, "max_steps": 20, "batch_size": 256, "lr": 1e-2, "num_threads": 1,
                      "progress": False, "output_dir": str(out)},
        }
    )
    package = kiln.train.run(recipe).package_dir
    assert package is not None
    return package


def test_quantize_embedding_tables_shrinks_weights_and_keeps_scores_close(rec_pkg: Path, tmp_path: Path) -> None:
    manifest = quantize_embedding_tables(rec_pkg, tmp_path / "int8")
    sizes = manifest["metrics"]["weights_bytes"]
    assert sizes["child"] < 0.3 * sizes["parent"]
    assert manifest["lineage"]["transformation"] == "int8-embeddings"
    queries = [RecommendQuery(user_id=u) for u in ("1", "196", "500")]
    fp32, int8 = load_recommender(rec_pkg), load_recommender(tmp_path / "int8")
    a, b = fp32.scores(queries), int8.scores(queries)
    finite = np.isfinite(a)
    assert np.array_equal(finite, np.isfinite(b))
    assert np.abs(a[finite] - b[finite]).max() < 0.02 * np.abs(a[finite]).max()


def test_quantize_embedding_tables_refuses_a_classifier(image_package: Path, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="recommendation packages only"):
        quantize_embedding_tables(image_package, tmp_path / "x")
