"""``POST /v1/models/{name}:recommend`` over real HTTP: known users, cold start, bad input, batching."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from kiln.config import parse_recipe
from kiln.serve.config import BatchingConfig, ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.integration.serve_harness import hold_model, serving, wait_until


@pytest.fixture(scope="module")
def rec_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import kiln.train

    out = tmp_path_factory.mktemp("rec")
    recipe = parse_recipe(
        {
            "name": "movies",
            "data": {"dataset": "movielens100k"},
            "recommend": {"model": "two-tower", "embedding_dim": 16, "hidden_size": 32},
            "train": {"epochs": 1, "max_steps": 10, "batch_size": 256, "lr": 3e-3, "num_threads": 1,
                      "progress": False, "output_dir": str(out)},
        }
    )
    result = kiln.train.run(recipe)
    assert result.package_dir is not None
    return result.package_dir


@pytest.fixture(scope="module")
def server(rec_pkg: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    text = make_text_package(tmp_path_factory.mktemp("text") / "sentiment")
    config = ServeConfig(
        models=[
            ModelConfig(
                name="movies",
                versions={1: str(rec_pkg)},
                batching=BatchingConfig(max_queue_delay_ms=50, max_concurrent_batches=1),
            ),
            ModelConfig(name="sentiment", versions={1: str(text)}),
        ]
    )
    with serving(config) as running:
        yield running


def test_recommend_known_user_returns_k_unseen_items_best_first(server, rec_pkg: Path) -> None:  # type: ignore[no-untyped-def]
    response = server.post("/v1/models/movies:recommend", {"user_id": "196", "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "movies" and body["version"] == 1 and body["cold_start"] is False
    items = body["items"]
    assert len(items) == 7
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    seen = pd.read_csv(rec_pkg / "seen.csv", dtype=str)
    assert not {it["item_id"] for it in items} & set(seen[seen["user_id"] == "196"]["item_id"])
    assert all(it["title"] for it in items)


def test_recommend_cold_start_user_from_features(server) -> None:  # type: ignore[no-untyped-def]
    features = {"age": 31, "gender": "F", "occupation": "engineer", "zip_code": "94110"}
    response = server.post("/v1/models/movies:recommend", {"features": features, "k": 5})
    assert response.status_code == 200, response.text
    assert response.json()["cold_start"] is True and len(response.json()["items"]) == 5


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"user_id": "no-such-user"}, 400, "unknown user id 'no-such-user'"),
        ({}, 400, "give user_id, or features"),
        ({"user_id": "196", "k": 0}, 422, "k"),
        ({"features": {"shoe_size": 44}}, 400, "unknown features ['shoe_size']"),
        ({"user_id": "196", "color": "red"}, 422, "color"),
    ],
)
def test_recommend_bad_input_is_a_clear_4xx(server, body: dict, status: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    response = server.post("/v1/models/movies:recommend", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_recommend_on_a_classifier_and_predict_on_a_recommender_are_refused(server) -> None:  # type: ignore[no-untyped-def]
    wrong_model = server.post("/v1/models/sentiment:recommend", {"user_id": "196"})
    assert wrong_model.status_code == 400 and "not a recommendation model" in wrong_model.json()["error"]
    wrong_route = server.post("/v1/models/movies:predict", {"inputs": [{"user_id": "196"}]})
    assert wrong_route.status_code == 400 and ":recommend" in wrong_route.json()["error"]
    unknown = server.post("/v1/models/nope:recommend", {"user_id": "196"})
    assert unknown.status_code == 404


def test_recommend_requests_are_batched_together(server) -> None:  # type: ignore[no-untyped-def]
    gate = hold_model(server, "movies")
    users = ["1", "2", "3", "4"]
    with ThreadPoolExecutor(len(users) + 1) as pool:
        first = pool.submit(server.post, "/v1/models/movies:recommend", {"user_id": "5", "k": 3})
        wait_until(gate.started.is_set, what="first batch to start")
        rest = [pool.submit(server.post, "/v1/models/movies:recommend", {"user_id": u, "k": 3}) for u in users]
        wait_until(lambda: server.repository.route("movies").batcher.depth == len(users), what="queued requests")
        gate.release.set()
        responses = [first.result(), *(f.result() for f in rest)]
    assert [r.status_code for r in responses] == [200] * 5
    assert [r.json()["user_id"] for r in responses] == ["5", *users]
    assert gate.batches == [1, len(users)]
