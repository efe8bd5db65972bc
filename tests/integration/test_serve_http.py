"""The serving app over real HTTP: protocols, bad input, batching, backpressure, auth, canary."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.errors import ConfigError
from kiln.registry.access import token_verifier
from kiln.serve.app import create_app
from kiln.serve.config import BatchingConfig, ModelConfig, ServeConfig
from tests.conftest import make_image_package, make_text_package
from tests.integration.serve_harness import hold_model, serving, wait_until

PIXELS = [float(i % 17) for i in range(64)]


@pytest.fixture(scope="module")
def text_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_package(tmp_path_factory.mktemp("serve") / "sentiment")


@pytest.fixture(scope="module")
def image_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_package(tmp_path_factory.mktemp("serve") / "digits")


def config(*models: ModelConfig, **kw: Any) -> ServeConfig:
    return ServeConfig(models=list(models), **kw)


def model(
    path: Path, *, name: str | None = None, versions: tuple[int, ...] = (1,), **kw: Any
) -> ModelConfig:
    return ModelConfig(name=name, versions={v: str(path) for v in versions}, **kw)


@pytest.fixture(scope="module")
def server(text_pkg: Path, image_pkg: Path) -> Any:
    cfg = config(
        model(text_pkg, versions=(1, 2)),
        model(image_pkg),
        max_body_bytes=20_000,
        max_request_inputs=50,
    )
    with serving(cfg) as running:
        yield running


def test_serve_rest_predict_returns_label_and_scores_per_text(server: Any) -> None:
    resp = server.post("/v1/models/sentiment:predict", {"inputs": ["a moving story", "dull"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "sentiment" and body["version"] == 2
    assert [set(o["scores"]) for o in body["outputs"]] == [{"neg", "pos"}] * 2
    assert all(o["label"] in ("neg", "pos") and o["truncated"] is False for o in body["outputs"])


def test_serve_rest_predict_pins_a_version(server: Any) -> None:
    resp = server.post("/v1/models/sentiment/versions/1:predict", {"inputs": ["fine"]})
    assert resp.status_code == 200 and resp.json()["version"] == 1


def test_serve_rest_predict_says_when_a_text_was_truncated(server: Any) -> None:
    resp = server.post("/v1/models/sentiment:predict", {"inputs": ["word " * 200, "short"]})
    assert [o["truncated"] for o in resp.json()["outputs"]] == [True, False]


def test_serve_rest_predict_accepts_flat_and_shaped_pixels(server: Any) -> None:
    shaped = [PIXELS[r * 8 : r * 8 + 8] for r in range(8)]
    resp = server.post("/v1/models/digits:predict", {"inputs": [PIXELS, shaped]})
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["outputs"]
    assert first["scores"] == pytest.approx(second["scores"])


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/models/sentiment:predict", {"inputs": [1]}, 400, "inputs[0]: expected a string"),
        ("/v1/models/sentiment:predict", {"inputs": []}, 422, "inputs"),
        ("/v1/models/sentiment:predict", {"texts": ["x"]}, 422, "inputs"),
        ("/v1/models/sentiment:predict", {"inputs": ["x"] * 51}, 413, "limit is 50"),
        ("/v1/models/digits:predict", {"inputs": [[1, 2]]}, 400, "expected 64 values"),
        ("/v1/models/digits:predict", {"inputs": ["text"]}, 400, "inputs[0]"),
        ("/v1/models/nope:predict", {"inputs": ["x"]}, 404, "unknown model 'nope'"),
        ("/v1/models/sentiment/versions/9:predict", {"inputs": ["x"]}, 404, "no version 9"),
    ],
)
def test_serve_rest_predict_answers_bad_requests_with_a_4xx_naming_the_problem(
    server: Any, path: str, body: Any, status: int, words: str
) -> None:
    resp = server.post(path, body)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]


def test_serve_rest_predict_rejects_malformed_json_with_400(server: Any) -> None:
    resp = httpx.post(server.url + "/v1/models/sentiment:predict", content=b'{"inputs": [')
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["error"]


def test_serve_rejects_an_oversized_body_with_413(server: Any) -> None:
    resp = server.post("/v1/models/sentiment:predict", {"inputs": ["x" * 30_000]})
    assert resp.status_code == 413
    assert "20000 bytes" in resp.json()["error"]


def test_serve_rejects_a_bad_timeout_header_with_400(server: Any) -> None:
    resp = server.post(
        "/v1/models/sentiment:predict", {"inputs": ["x"]}, headers={"X-Request-Timeout-Ms": "soon"}
    )
    assert resp.status_code == 400 and "X-Request-Timeout-Ms" in resp.json()["error"]


def test_serve_v2_health_and_model_metadata(server: Any) -> None:
    assert server.get("/v2/health/live").status_code == 200
    assert server.get("/v2/health/ready").status_code == 200
    assert server.get("/v2/models/sentiment/ready").status_code == 200
    assert server.get("/v2/models/sentiment/versions/1/ready").status_code == 200
    assert server.get("/v2/models/nope/ready").status_code == 404
    meta = server.get("/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"][1] == {"name": "scores", "datatype": "FP32", "shape": [-1, 10]}
    assert server.get("/v2/models/sentiment").json()["versions"] == ["1", "2"]


def test_serve_v2_infer_takes_bytes_tensors(server: Any) -> None:
    body = {
        "id": "req-1",
        "inputs": [
            {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["good"], ["bad"]]}
        ],
    }
    resp = server.post("/v2/models/sentiment/versions/1/infer", body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["model_name"] == "sentiment" and out["model_version"] == "1" and out["id"] == "req-1"
    label, scores = out["outputs"]
    assert label["datatype"] == "BYTES" and label["shape"] == [2] and len(label["data"]) == 2
    assert scores["shape"] == [2, 2] and sum(scores["data"][:2]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT32", "UINT8"])
def test_serve_v2_infer_takes_numeric_tensors(server: Any, datatype: str) -> None:
    data = [int(x) for x in PIXELS] if datatype[0] in "IU" else PIXELS
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 1, 8, 8], "datatype": datatype, "data": data}],
        "outputs": [{"name": "scores"}],
    }
    resp = server.post("/v2/models/digits/infer", body)
    assert resp.status_code == 200, resp.text
    (scores,) = resp.json()["outputs"]
    assert scores["name"] == "scores" and scores["shape"] == [1, 10]


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        (
            {"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": PIXELS},
            "needs 128 elements",
        ),
        (
            {"name": "pixels", "shape": [1, 64], "datatype": "BYTES", "data": PIXELS},
            "encoded images",
        ),
        (
            {"name": "pixels", "shape": [1, 64], "datatype": "FP8", "data": PIXELS},
            "unknown datatype",
        ),
        ({"name": "image", "shape": [1, 64], "datatype": "FP32", "data": PIXELS}, "inputs[0].name"),
        (
            {"name": "pixels", "shape": [1, 32], "datatype": "FP32", "data": PIXELS[:32]},
            "expected [N, 1, 8, 8]",
        ),
        (
            {"name": "pixels", "shape": [1, 64], "datatype": "INT8", "data": PIXELS},
            "expected a INT8 value",
        ),
        ({"name": "pixels", "shape": [0, 64], "datatype": "FP32", "data": []}, "batch dimension"),
    ],
)
def test_serve_v2_infer_rejects_a_bad_tensor_with_400_naming_the_field(
    server: Any, tensor: dict[str, Any], words: str
) -> None:
    resp = server.post("/v2/models/digits/infer", {"inputs": [tensor]})
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"]


def test_serve_openapi_schema_lists_the_rest_endpoints(server: Any) -> None:
    paths = server.get("/openapi.json").json()["paths"]
    assert "/v1/models/{name}:predict" in paths and "/v2/models/{name}/infer" in paths


def test_serve_metrics_report_requests_latency_batches_and_models(server: Any) -> None:
    server.post("/v1/models/sentiment/versions/1:predict", {"inputs": ["x"]})
    text = server.get("/metrics").text
    assert 'kiln_requests_total{model="sentiment",status="200",version="1"}' in text
    for name in (
        "kiln_request_duration_seconds_bucket",
        "kiln_queue_duration_seconds_bucket",
        "kiln_compute_duration_seconds_bucket",
        "kiln_batch_size_bucket",
        "kiln_queue_depth",
        "kiln_requests_in_flight",
        "kiln_models_loaded 3.0",
    ):
        assert name in text


def test_serve_batches_requests_that_arrive_while_the_model_is_busy(text_pkg: Path) -> None:
    one_at_a_time = BatchingConfig(max_concurrent_batches=1)
    with serving(config(model(text_pkg, batching=one_at_a_time))) as srv:
        gate = hold_model(srv, "sentiment")
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(srv.post, "/v1/models/sentiment:predict", {"inputs": ["one"]})
            assert gate.started.wait(30)
            rest = [
                pool.submit(srv.post, "/v1/models/sentiment:predict", {"inputs": [f"t{i}"]})
                for i in range(6)
            ]
            batcher = srv.repository.route("sentiment").batcher
            wait_until(lambda: batcher.depth == 6, what="six queued requests")
            gate.release.set()
            responses = [first.result(), *(f.result() for f in rest)]
        assert [r.status_code for r in responses] == [200] * 7
        assert gate.batches == [1, 6]


def test_serve_gives_a_lone_batch_every_core_and_batches_side_by_side_one_thread(
    text_pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiln.runtime
    import kiln.serve.config as serve_config
    import kiln.serve.threads as serve_threads

    for module in (serve_config, serve_threads):  # a 2-core machine, whatever this one has
        monkeypatch.setattr(module, "available_cpus", lambda: 2)
    texts = ["a moving story", "dull and long", "fine"]
    expected = kiln.runtime.load(text_pkg, device="cpu").predict(texts)
    url = "/v1/models/sentiment:predict"
    with serving(config(model(text_pkg))) as srv:  # num_threads: auto, the default
        lone = srv.post(url, {"inputs": texts})
        gate = hold_model(srv, "sentiment")
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(srv.post, url, {"inputs": texts[:1]})
            assert gate.started.wait(30)
            second = pool.submit(srv.post, url, {"inputs": texts[1:]})
            wait_until(lambda: len(gate.batches) == 2, what="a second batch beside the held one")
            gate.release.set()
            concurrent = [first.result(), second.result()]
        metrics = srv.get("/metrics").text
    assert gate.threads == [2, 1]  # the held batch started alone; the next ran beside it
    assert 'kiln_batches_total{model="sentiment",threads="2",version="1"} 2.0' in metrics
    assert 'kiln_batches_total{model="sentiment",threads="1",version="1"} 1.0' in metrics
    answered = [lone.json()["outputs"], concurrent[0].json()["outputs"] + concurrent[1].json()["outputs"]]
    for outputs in answered:
        assert [o["label"] for o in outputs] == [e["label"] for e in expected]
        for got, want in zip(outputs, expected, strict=True):
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_serve_sheds_load_with_503_and_retry_after_when_the_queue_is_full(text_pkg: Path) -> None:
    batching = BatchingConfig(max_batch_size=1, max_queue_size=2, max_concurrent_batches=1)
    with serving(config(model(text_pkg, batching=batching))) as srv:
        gate = hold_model(srv, "sentiment")
        with ThreadPoolExecutor(4) as pool:
            held = [pool.submit(srv.post, "/v1/models/sentiment:predict", {"inputs": ["x"]})]
            assert gate.started.wait(30)
            held += [
                pool.submit(srv.post, "/v1/models/sentiment:predict", {"inputs": ["x"]})
                for _ in range(2)
            ]
            batcher = srv.repository.route("sentiment").batcher
            wait_until(lambda: batcher.depth == 2, what="a full queue")
            shed = srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]})
            # Refused before the body is read: even a body that is not JSON gets the 503.
            unread = httpx.post(srv.url + "/v1/models/sentiment:predict", content=b"{not json", timeout=30)
            v2_shed = srv.post("/v2/models/sentiment/infer", {"inputs": []})
            gate.release.set()
            assert [f.result().status_code for f in held] == [200] * 3
        assert shed.status_code == unread.status_code == v2_shed.status_code == 503
        assert int(shed.headers["Retry-After"]) >= 1
        assert "queue full" in shed.json()["error"] and "queue full" in unread.json()["error"]
        assert srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]}).status_code == 200


def test_serve_answers_504_when_a_request_deadline_passes(text_pkg: Path) -> None:
    with serving(config(model(text_pkg))) as srv:
        gate = hold_model(srv, "sentiment")
        resp = srv.post(
            "/v1/models/sentiment:predict",
            {"inputs": ["x"]},
            headers={"X-Request-Timeout-Ms": "50"},
        )
        gate.release.set()
        assert resp.status_code == 504
        assert "deadline exceeded" in resp.json()["error"]


def test_serve_is_live_but_not_ready_until_models_are_loaded(
    text_pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiln.serve.repository as repository

    release = threading.Event()
    real_load = repository.load_served_model

    def slow_load(**kw: Any) -> Any:
        release.wait(60)
        return real_load(**kw)

    monkeypatch.setattr(repository, "load_served_model", slow_load)
    with serving(config(model(text_pkg)), wait_ready=False) as srv:
        assert srv.get("/v2/health/live").status_code == 200
        assert srv.get("/v2/health/ready").status_code == 503
        loading = srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]})
        assert loading.status_code == 503 and "still loading" in loading.json()["error"]
        release.set()
        wait_until(lambda: srv.get("/v2/health/ready").status_code == 200, what="ready")
        assert srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]}).status_code == 200


def test_serve_canary_splits_traffic_by_weight_and_sticks_by_key(text_pkg: Path) -> None:
    cfg = config(model(text_pkg, versions=(3, 4), canary={3: 50, 4: 50}, sticky_header="X-User"))
    with serving(cfg) as srv:
        seen = {
            srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]}).json()["version"]
            for _ in range(60)
        }
        assert seen == {3, 4}
        for user in ("ann", "bob", "cy"):
            versions = {
                srv.post(
                    "/v1/models/sentiment:predict", {"inputs": ["x"]}, headers={"X-User": user}
                ).json()["version"]
                for _ in range(10)
            }
            assert len(versions) == 1


def test_serve_management_needs_a_token_and_sets_canary_weights(text_pkg: Path) -> None:
    verifier = token_verifier(["s3cret"])
    with serving(config(model(text_pkg, versions=(3, 4))), verifier=verifier) as srv:
        body = {"weights": {"3": 0, "4": 100}}
        assert srv.client_put("/v1/admin/models/sentiment/canary", body).status_code == 401
        bad = srv.client_put("/v1/admin/models/sentiment/canary", body, token="wrong")
        assert bad.status_code == 401
        ok = srv.client_put(
            "/v1/admin/models/sentiment/canary", {"weights": {"3": 100}}, token="s3cret"
        )
        assert ok.status_code == 200 and ok.json()["canary"] == {"3": 100}
        versions = {
            srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]}).json()["version"]
            for _ in range(10)
        }
        assert versions == {3}
        # Inference on a loopback bind needs no token.
        assert srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]}).status_code == 200


def test_serve_management_is_closed_without_a_token_file(server: Any) -> None:
    resp = server.post("/v1/admin/models/sentiment:load", {"source": "/tmp"})
    assert resp.status_code == 403 and "--token-file" in resp.json()["error"]


def test_serve_non_loopback_bind_needs_tokens_and_then_guards_inference(text_pkg: Path) -> None:
    with pytest.raises(ConfigError, match="needs bearer tokens"):
        create_app(config(model(text_pkg), host="0.0.0.0"))
    verifier = token_verifier(["t0k"])
    with serving(
        config(model(text_pkg), host="0.0.0.0"), verifier=verifier, wait_ready=False
    ) as srv:
        wait_until(lambda: srv.get("/v2/health/ready").status_code == 200, what="ready")
        assert srv.post("/v1/models/sentiment:predict", {"inputs": ["x"]}).status_code == 401
        assert srv.get("/metrics").status_code == 401
        authed = srv.post(
            "/v1/models/sentiment:predict",
            {"inputs": ["x"]},
            headers={"Authorization": "Bearer t0k"},
        )
        assert authed.status_code == 200


def test_serve_refuses_to_load_from_a_url(text_pkg: Path) -> None:
    with serving(config(model(text_pkg)), verifier=token_verifier(["t"])) as srv:
        resp = srv.post(
            "/v1/admin/models/sentiment:load",
            {"source": "https://example.com/m"},
            headers={"Authorization": "Bearer t"},
        )
        assert resp.status_code == 400 and "URLs is not allowed" in resp.json()["error"]


def test_serve_rest_predict_rejects_an_undecodable_body_with_a_json_error(server: Any) -> None:
    resp = httpx.post(
        server.url + "/v1/models/sentiment:predict",
        content=b"\x00\xff\xfe",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("body:")
