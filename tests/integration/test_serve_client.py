"""``kiln.Client`` against a real server: sync and async predict, retry after 503."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import kiln
from kiln.serve.client import ServerError
from kiln.serve.config import BatchingConfig, ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.integration.serve_harness import hold_model, serving, wait_until


@pytest.fixture(scope="module")
def text_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_package(tmp_path_factory.mktemp("client") / "sentiment")


def test_client_predicts_sync_and_async_and_raises_on_errors(text_pkg: Path) -> None:
    cfg = ServeConfig(models=[ModelConfig(versions={1: str(text_pkg)})])
    with serving(cfg) as srv:
        client = kiln.Client(srv.url)
        assert client.predict("sentiment", ["fine"])["version"] == 1
        result = asyncio.run(client.apredict("sentiment", ["fine", "bad"], version=1))
        assert len(result["outputs"]) == 2
        with pytest.raises(ServerError, match="HTTP 404") as info:
            client.predict("nope", ["x"])
        assert info.value.status == 404


def test_client_retries_after_503_until_the_queue_has_room(text_pkg: Path) -> None:
    batching = BatchingConfig(max_batch_size=1, max_queue_size=1, max_concurrent_batches=1)
    cfg = ServeConfig(models=[ModelConfig(versions={1: str(text_pkg)}, batching=batching)])
    with serving(cfg) as srv:
        gate = hold_model(srv, "sentiment")
        client = kiln.Client(srv.url, max_retries=50, max_retry_wait_s=0.05)
        results: list[object] = []
        busy = [
            threading.Thread(target=lambda: results.append(client.predict("sentiment", ["x"])))
            for _ in range(2)
        ]
        busy[0].start()
        assert gate.started.wait(30)
        busy[1].start()
        batcher = srv.repository.route("sentiment").batcher
        wait_until(lambda: batcher.depth == 1, what="a full queue")
        shed = srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]})
        assert shed.status_code == 503
        retrying = threading.Thread(
            target=lambda: results.append(client.predict("sentiment", ["x"]))
        )
        retrying.start()
        gate.release.set()
        for thread in (*busy, retrying):
            thread.join(60)
        assert len(results) == 3
