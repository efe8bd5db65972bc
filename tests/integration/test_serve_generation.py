"""Text generation over real HTTP: the OpenAI-compatible endpoints, continuous batching,
cancellation, load shedding, metrics and bad input, on a tiny random Llama."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from kiln.serve.config import GenerationServingConfig, ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.helpers import tiny_generation_package
from tests.integration.serve_harness import Running, StepGate, serving, wait_until

CONTEXT = 128
PROMPTS = ["a", "the dog ran in the park; the sun was", "café au", "question: what is the"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen-serve")
    return {
        "chat": tiny_generation_package(root / "chat", context_length=CONTEXT),
        "strict": tiny_generation_package(root / "strict", context_length=CONTEXT, truncation="refuse"),
        "sentiment": make_text_package(root / "sentiment"),
    }


@pytest.fixture(scope="module")
def server(packages: dict[str, Path]) -> Iterator[Running]:
    cfg = ServeConfig(
        models=[
            ModelConfig(versions={1: str(packages["chat"])}),
            ModelConfig(versions={1: str(packages["strict"])}),
            ModelConfig(versions={1: str(packages["sentiment"])}),
            ModelConfig(
                name="tight",
                versions={1: str(packages["chat"])},
                generation=GenerationServingConfig(max_sequences=1, max_waiting=1),
            ),
        ]
    )
    with serving(cfg) as running:
        yield running


@pytest.fixture
def gate(server: Running) -> Iterator[StepGate]:
    held = StepGate(server, "chat")
    try:
        yield held
    finally:
        held.open()
        del held.engine._iterate


class ManualClock:
    """The engine's clock, moved only by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(gate: StepGate) -> Iterator[ManualClock]:
    manual, original = ManualClock(), gate.engine.clock
    gate.engine.clock = manual
    try:
        yield manual
    finally:
        gate.engine.clock = original


def chat(server: Running, content: str, headers: dict[str, str] | None = None, **fields: Any) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": content}], "max_tokens": 12, **fields}
    return server.post("/v1/chat/completions", body, headers=headers)


def metric(server: Running, name: str, model: str = "chat") -> float:
    pattern = re.compile(rf'^{name}\{{(?=[^}}]*model="{model}")[^}}]*\}} (\S+)$', re.M)
    match = pattern.search(server.get("/metrics").text)
    return float(match.group(1)) if match else 0.0


def sse_events(lines: Iterator[str]) -> Iterator[Any]:
    for line in lines:
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            yield payload if payload == "[DONE]" else json.loads(payload)


def test_chat_completion_answers_with_usage_and_finish_reason(server: Running) -> None:
    resp = chat(server, "hello there", max_tokens=9)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "chat"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 9
    assert usage["total_tokens"] == usage["prompt_tokens"] + 9
    assert resp.headers["X-Model-Version"] == "1"


def test_completion_stream_sends_one_chunk_per_piece_then_done(server: Running) -> None:
    body = {"model": "chat", "prompt": "the cat sat", "max_tokens": 10}
    whole = server.post("/v1/completions", body).json()
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(resp.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert len(chunks) > 2


def test_stop_string_ends_the_answer_without_returning_it(server: Running) -> None:
    full = chat(server, "tell me", max_tokens=20).json()["choices"][0]["message"]["content"]
    stop = full[3:6]
    stopped = chat(server, "tell me", max_tokens=20, stop=stop).json()["choices"][0]
    assert stopped["message"]["content"] == full[: full.index(stop)]
    assert stopped["finish_reason"] == "stop"


def test_seeded_sampling_repeats_and_differs_across_seeds(server: Running) -> None:
    def sample(seed: int) -> str:
        return str(chat(server, "hi", temperature=1.3, seed=seed).json()["choices"][0]["message"]["content"])

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(1, 5)}) > 1


def test_openai_client_sync_and_streaming(server: Running) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    answer = client.chat.completions.create(model="chat", messages=messages, max_tokens=8)
    assert answer.choices[0].finish_reason == "length" and answer.usage is not None
    assert answer.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    completion = client.completions.create(model="chat", prompt="the cat", max_tokens=5)
    assert completion.choices[0].text and completion.usage is not None
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"chat", "strict", "sentiment", "tight"}
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=messages)
    assert err.value.body is not None and err.value.body["param"] == "model"  # type: ignore[index]


def test_models_lists_classifiers_and_generators_in_openai_shape(server: Running) -> None:
    body = server.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["chat"]["task"] == "text-generation" and by_id["sentiment"]["task"] == "text-classification"
    assert all(m["object"] == "model" and m["owned_by"] == "kiln" and m["versions"] == [1] for m in by_id.values())


def test_a_request_arriving_mid_stream_finishes_first_in_the_same_batch(server: Running, gate: StepGate) -> None:
    first_events: list[Any] = []
    first_done = threading.Event()
    got_first_token = threading.Event()

    def stream_first() -> None:
        body = {"model": "chat", "prompt": PROMPTS[1], "max_tokens": 40, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
            for event in sse_events(resp.iter_lines()):
                first_events.append(event)
                got_first_token.set()
        first_done.set()

    threading.Thread(target=stream_first, daemon=True).start()
    gate.allow(1)  # the first request's prefill and one decode step
    assert got_first_token.wait(30)
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(server.post, "/v1/completions", {"model": "chat", "prompt": PROMPTS[2], "max_tokens": 3})
        wait_until(lambda: gate.engine.waiting == 1, what="the second request queued")
        gate.allow(2)  # its prefill joins at the next round; two rounds give it 3 tokens
        answer = second.result(timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 3
    assert not first_done.is_set()  # the first stream is still generating, held at the gate
    gate.open()
    assert first_done.wait(30)
    assert first_events[-1] == "[DONE]" and first_events[-2]["choices"][0]["finish_reason"] == "length"
    alone = server.post("/v1/completions", {"model": "chat", "prompt": PROMPTS[2], "max_tokens": 3}).json()
    assert answer.json()["choices"][0]["text"] == alone["choices"][0]["text"]


def test_concurrent_greedy_answers_equal_each_alone(server: Running, gate: StepGate) -> None:
    def ask(prompt: str) -> str:
        resp = server.post("/v1/completions", {"model": "chat", "prompt": prompt, "max_tokens": 16})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["choices"][0]["text"])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        futures = [pool.submit(ask, p) for p in PROMPTS]
        wait_until(lambda: gate.engine.waiting == len(PROMPTS), what="all requests queued")
        gate.open()
        together = [f.result(timeout=60) for f in futures]
    assert together == [ask(p) for p in PROMPTS]
    text = server.get("/metrics").text
    batch_sizes = re.findall(
        r'kiln_generation_decode_batch_size_bucket\{le="(\S+)",model="chat",version="1"\} (\S+)', text
    )
    counts = {le: float(n) for le, n in batch_sizes}
    assert counts["4.0"] > counts["2.0"]  # some decode steps ran three or four sequences at once


def test_client_disconnect_cancels_the_sequence_and_frees_its_slot(server: Running, gate: StepGate) -> None:
    completion_before = metric(server, "kiln_generation_completion_tokens_total")
    cancelled_before = metric(server, "kiln_generation_cancelled_total")
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        events = sse_events(resp.iter_lines())  # kept: dropping the iterator closes the stream
        next(events)  # the opening chunk (role only)
        gate.allow(1)
        wait_until(lambda: metric(server, "kiln_generation_running_sequences") == 1, what="admitted")
    wait_until(lambda: metric(server, "kiln_generation_cancelled_total") == cancelled_before + 1, what="cancel")
    gate.open()
    wait_until(lambda: metric(server, "kiln_generation_running_sequences") == 0, what="slot freed")
    assert metric(server, "kiln_generation_kv_cache_reserved_tokens") == 0
    assert metric(server, "kiln_generation_completion_tokens_total") - completion_before <= 4


def test_a_client_leaving_a_whole_answer_request_cancels_it(server: Running, gate: StepGate) -> None:
    cancelled_before = metric(server, "kiln_generation_cancelled_total")
    body = json.dumps({"model": "chat", "prompt": "the cat", "max_tokens": 50}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: gate.engine.waiting == 1, what="the request queued")
    wait_until(lambda: metric(server, "kiln_generation_cancelled_total") == cancelled_before + 1, what="cancel")
    gate.open()
    wait_until(lambda: gate.engine.waiting == 0 and gate.engine.running == 0, what="nothing left")


def test_a_whole_answer_past_its_deadline_gets_504_and_frees_its_slot(
    server: Running, gate: StepGate, clock: ManualClock
) -> None:
    timed_out_before = metric(server, "kiln_generation_timed_out_total")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, server, "hi", max_tokens=50, headers={"X-Request-Timeout-Ms": "1000"})
        wait_until(lambda: gate.engine.waiting == 1, what="the request queued")
        gate.allow(3)  # admitted, prefilled, two tokens: all within its second
        wait_until(lambda: gate.engine.waiting == 0 and gate.engine._running, what="generating")
        clock.now += 1.0
        gate.allow(1)
        resp = answer.result(timeout=60)
    assert resp.status_code == 504
    error = resp.json()["error"]
    assert error["code"] == "timeout" and "X-Request-Timeout-Ms" in error["message"]
    assert metric(server, "kiln_generation_timed_out_total") == timed_out_before + 1
    assert gate.engine.waiting == 0 and gate.engine.running == 0 and gate.engine.reserved_tokens == 0


def test_a_stream_past_its_deadline_ends_with_an_error_event_the_openai_client_raises(
    server: Running, gate: StepGate, clock: ManualClock
) -> None:
    body = {"model": "chat", "prompt": "the cat", "max_tokens": 50, "stream": True}
    headers = {"X-Request-Timeout-Ms": "1"}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=headers, timeout=60) as resp:
        wait_until(lambda: gate.engine.waiting == 1, what="the request queued")
        clock.now += 1.0
        gate.allow(1)
        events = list(sse_events(resp.iter_lines()))
    assert resp.status_code == 200
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    assert not any("choices" in e and e["choices"][0]["finish_reason"] for e in events[:-1])
    assert gate.engine.running == 0 and gate.engine.reserved_tokens == 0
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True, extra_headers=headers
    )
    wait_until(lambda: gate.engine.waiting == 1, what="the request queued")
    clock.now += 1.0
    gate.allow(1)
    with pytest.raises(openai.APIError, match="deadline"):
        list(stream)


def test_a_bad_timeout_header_gets_an_openai_error(server: Running) -> None:
    resp = chat(server, "hi", headers={"X-Request-Timeout-Ms": "soon"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "X-Request-Timeout-Ms"


def test_requests_past_the_waiting_bound_get_503_with_retry_after(server: Running) -> None:
    held = StepGate(server, "tight")
    body = {"model": "tight", "prompt": "the cat", "max_tokens": 4}
    try:
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(server.post, "/v1/completions", body)
            wait_until(lambda: held.engine.waiting == 1, what="one request waiting")
            refused = server.post("/v1/completions", body)
            assert refused.status_code == 503
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["type"] == "server_error"
            held.open()
            assert queued.result(timeout=30).status_code == 200
    finally:
        held.open()


def test_metrics_report_latency_histograms_and_token_counters(server: Running) -> None:
    prompt_before = metric(server, "kiln_generation_prompt_tokens_total")
    chat(server, "count me", max_tokens=5)
    text = server.get("/metrics").text
    for name in (
        "kiln_generation_time_to_first_token_seconds_count",
        "kiln_generation_inter_token_latency_seconds_count",
        "kiln_generation_duration_seconds_count",
        "kiln_generation_kv_cache_usage_ratio",
        "kiln_generation_waiting_sequences",
    ):
        assert f'{name}{{model="chat",version="1"}}' in text
    assert metric(server, "kiln_generation_prompt_tokens_total") > prompt_before


def test_a_prompt_over_the_context_is_cut_from_the_left_when_the_package_allows(server: Running) -> None:
    long = "the cat sat on the mat and looked at the door " * 12
    resp = server.post("/v1/completions", {"model": "chat", "prompt": long, "max_tokens": 8})
    assert resp.status_code == 200
    assert resp.json()["usage"]["prompt_tokens"] == CONTEXT - 8


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ("/v1/chat/completions", {"model": "sentiment", "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ("/v1/completions", {"model": "sentiment", "prompt": "x"}, 400, "model"),
        ("/v1/chat/completions", {"model": "chat", "messages": []}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": "chat", "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        ("/v1/chat/completions", {"model": "chat"}, 400, "messages"),
        ("/v1/completions", {"model": "strict", "prompt": "the cat sat on the mat " * 30}, 400, "prompt"),
        (
            "/v1/chat/completions",
            {"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        ("/v1/completions", {"model": "chat", "prompt": "x", "max_tokens": CONTEXT}, 400, "max_tokens"),
        ("/v1/completions", {"model": "chat", "prompt": "x", "stop": 3}, 400, "stop"),
        ("/v1/completions", {"model": "chat", "prompt": "x", "stop": ["a", ""]}, 400, "stop"),
        ("/v1/completions", {"model": "chat", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("/v1/completions", {"model": "chat", "prompt": "x", "n": 2}, 400, "n"),
        ("/v1/completions", {"model": "chat", "prompt": ["x", "y"]}, 400, "prompt"),
        ("/v1/completions", {"model": "chat", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/v1/completions", {"model": "chat", "prompt": "x", "logit_bias": {}}, 400, "logit_bias"),
    ],
)
def test_bad_input_gets_an_openai_error_naming_the_field(
    server: Running, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    resp = server.post(path, {**body, "stream": True})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["message"] and error["type"] == "invalid_request_error"


def test_text_that_is_not_unicode_is_refused_naming_the_field(server: Running) -> None:
    raw = b'{"model": "chat", "prompt": "a\\ud800b", "max_tokens": 3}'  # a lone surrogate escape
    resp = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"


def test_a_chat_model_on_the_predict_endpoint_is_told_where_to_go(server: Running) -> None:
    resp = server.post("/v1/models/chat:predict", {"inputs": ["hi"]})
    assert resp.status_code == 400
    assert "/v1/chat/completions" in resp.json()["error"]


def test_a_reloaded_version_finishes_the_streams_it_started_and_canary_routes(packages: dict[str, Path]) -> None:
    from kiln.registry.access import token_verifier

    auth = {"Authorization": "Bearer t0k"}
    cfg = ServeConfig(models=[ModelConfig(versions={1: str(packages["chat"]), 2: str(packages["chat"])})])
    with serving(cfg, verifier=token_verifier(["t0k"])) as srv:
        old = StepGate(srv, "chat")  # version 2, the newest, takes the traffic
        events: list[Any] = []
        done = threading.Event()

        def stream() -> None:
            body = {"model": "chat", "prompt": "the cat", "max_tokens": 30, "stream": True}
            with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as resp:
                events.extend(sse_events(resp.iter_lines()))
            done.set()

        threading.Thread(target=stream, daemon=True).start()
        wait_until(lambda: old.engine.waiting == 1, what="the stream queued")
        old.allow(1)
        with ThreadPoolExecutor(1) as pool:
            reload = pool.submit(
                httpx.post,
                srv.url + "/v1/admin/models/chat:load",
                json={"source": str(packages["chat"]), "version": 2},
                headers=auth,
                timeout=60,
            )
            wait_until(lambda: srv.repository.route("chat", 2).engine is not old.engine, what="the switch")
            fresh = srv.post("/v1/completions", {"model": "chat", "prompt": "a", "max_tokens": 3})
            assert fresh.status_code == 200 and fresh.headers["X-Model-Version"] == "2"
            assert not done.is_set() and not reload.done()  # the old engine drains the stream it holds
            old.open()
            assert reload.result(timeout=60).status_code == 200
        assert done.wait(30) and events[-1] == "[DONE]"
        assert sum(1 for e in events[:-1] if e["choices"][0]["text"]) >= 1
        assert events[-2]["choices"][0]["finish_reason"] in ("length", "stop")
        canary = srv.client_put("/v1/admin/models/chat/canary", {"weights": {"1": 100}}, token="t0k")
        assert canary.status_code == 200
        pinned = srv.post("/v1/completions", {"model": "chat", "prompt": "a", "max_tokens": 2}, headers=auth)
        assert pinned.headers["X-Model-Version"] == "1"
