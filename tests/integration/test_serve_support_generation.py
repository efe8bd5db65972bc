"""The support assistant writing its answers: ``/v1/apps/{name}:answer`` over real HTTP for a
support package whose recipe names a chat package (a tiny random Llama), streamed and not."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.apps.support import build_support_package
from kiln.config import parse_recipe
from kiln.errors import ConfigError
from kiln.registry import Registry
from kiln.runtime import load_generator
from kiln.runtime.grounding import grounded_messages, retrieve_entries
from kiln.runtime.package import package_digest
from kiln.runtime.retrieval import load_faq_index
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.helpers import ROOT, kiln_cli, tiny_generation_package
from tests.integration.serve_harness import Running, serving, wait_until
from tests.integration.test_serve_generation import StepGate

FAQ = [
    ("How do I reset my PIN?", "Open the app and choose Card > Reset PIN."),
    ("My card has not arrived yet", "Cards arrive within 5 working days."),
    ("Why was I charged a fee?", "Foreign transfers cost 0.5%."),
    ("Can I close my account?", "Yes, in Settings > Close account."),
]
UNRELATED = "what a lovely day for a picnic"
ANSWER_TOKENS = 6


def support_recipe(root: Path, **support: Any) -> Any:
    """A support recipe whose validation split repeats the asked messages (half of each labelled
    either way), so the calibrated hand-off threshold lets every asked message through (out-of-scope
    detection off: tests/integration/test_serve_support_oos.py covers it)."""
    rows = [(text, label) for text in [q for q, _ in FAQ] + [UNRELATED] for label in ("neg", "pos") * 4]
    data = root / "messages.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    faq = root / "faq.csv"
    faq.write_text("question,answer\n" + "".join(f'"{q}","{a}"\n' for q, a in FAQ))
    return parse_recipe(
        {
            "name": "support-test",
            "data": {"train_file": str(data), "drop_duplicates": False, "val_fraction": 0.4, "test_fraction": 0.2},
            "model": {"kind": "bert", "size": "tiny", "vocab_size": 200, "max_length": 32},
            "support": {"faq_file": str(faq), "target_accuracy": 0.01, "max_answer_tokens": ANSWER_TOKENS,
                        "out_of_scope": None, **support},
        }
    )


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("support-gen")
    classifier = make_text_package(root / "intents")
    chat = tiny_generation_package(root / "chat", context_length=2048)
    built = {"chat": chat, "classifier": classifier}
    for name, support in {
        "grounded": {"chat_package": str(chat), "top_k": 2, "min_answer_score": -1.0},
        "picky": {"chat_package": str(chat), "min_answer_score": 0.99},
        "verbatim": {"min_answer_score": -1.0},
    }.items():
        build_support_package(support_recipe(root, **support), classifier, root / name)
        built[name] = root / name
    return built


@pytest.fixture(scope="module")
def server(packages: dict[str, Path]) -> Iterator[Running]:
    config = ServeConfig(
        models=[
            ModelConfig(name="chat", versions={1: str(packages["chat"])}),
            *(ModelConfig(name=n, versions={1: str(packages[n])}) for n in ("grounded", "picky", "verbatim")),
        ]
    )
    with serving(config) as running:
        yield running


def sse_events(lines: Iterator[str]) -> Iterator[Any]:
    for line in lines:
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            yield payload if payload == "[DONE]" else json.loads(payload)


def streamed(server: Running, name: str, text: str) -> list[Any]:
    body = {"text": text, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/apps/{name}:answer", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(resp.iter_lines()))


def metric(server: Running, name: str, model: str) -> float:
    pattern = re.compile(rf'^{name}\{{(?=[^}}]*model="{model}")[^}}]*\}} (\S+)$', re.M)
    match = pattern.search(server.get("/metrics").text)
    return float(match.group(1)) if match else 0.0


def test_support_answer_is_generated_from_the_numbered_nearest_entries_and_cites_them(
    server: Running, packages: dict[str, Path]
) -> None:
    resp = server.post("/v1/apps/grounded:answer", {"text": "How do I reset my PIN?"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["handoff"] is False and body["chat_model"] == "chat@1" and body["finish_reason"] in ("stop", "length")
    assert [s["id"] for s in body["sources"]][0] == 0 and len(body["sources"]) == 2
    assert body["sources"][0] == {"id": 0, "question": "How do I reset my PIN?", "score": pytest.approx(1.0, abs=1e-3)}
    assert body["sources"][1]["question"] == FAQ[body["sources"][1]["id"]][0]
    # The answer is the chat package's own greedy answer to the grounded prompt of those entries.
    manifest = json.loads((packages["grounded"] / "kiln.json").read_text())
    index = load_faq_index(packages["grounded"], manifest["app"]["encoder"])
    entries = retrieve_entries(index, "How do I reset my PIN?", top_k=2, min_score=-1.0)
    messages = grounded_messages(manifest["app"]["grounding"]["prompt"], "How do I reset my PIN?", entries)
    assert "[1] Question: How do I reset my PIN?\nAnswer: Open the app" in messages[0]["content"]
    assert "[2] Question: " in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "How do I reset my PIN?"}
    [expected] = load_generator(packages["chat"]).generate([messages], max_new_tokens=ANSWER_TOKENS, temperature=0.0)
    assert body["answer"] == expected.text


def test_support_answer_streams_pieces_then_the_whole_answer_then_done(server: Running) -> None:
    whole = server.post("/v1/apps/grounded:answer", {"text": "My card has not arrived yet"}).json()
    events = streamed(server, "grounded", "My card has not arrived yet")
    assert events[-1] == "[DONE]" and all(set(e) == {"delta"} for e in events[:-2])
    final = events[-2]
    assert "".join(e["delta"] for e in events[:-2]) == final["answer"] == whole["answer"]
    assert final == whole  # the last event is the body a non-streamed request gets
    assert {"intent", "confidence", "sources"} <= set(final) and final["sources"][0]["id"] == 1


def test_support_answers_count_on_the_chat_models_generation_metrics(server: Running) -> None:
    before = metric(server, "kiln_generation_completion_tokens_total", "chat")
    assert server.post("/v1/apps/grounded:answer", {"text": "Why was I charged a fee?"}).status_code == 200
    assert metric(server, "kiln_generation_completion_tokens_total", "chat") > before


def test_a_client_leaving_a_streamed_support_answer_cancels_its_sequence(server: Running) -> None:
    gate = StepGate(server, "chat")
    try:
        cancelled_before = metric(server, "kiln_generation_cancelled_total", "chat")
        body = {"text": "How do I reset my PIN?", "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/apps/grounded:answer", json=body, timeout=60) as resp:
            assert resp.status_code == 200
            gate.allow(1)  # admitted; the rest of its rounds wait for the gate
            wait_until(lambda: metric(server, "kiln_generation_running_sequences", "chat") == 1, what="admitted")
        wait_until(
            lambda: metric(server, "kiln_generation_cancelled_total", "chat") == cancelled_before + 1, what="cancel"
        )
    finally:
        gate.open()
        del gate.engine._iterate
    wait_until(lambda: metric(server, "kiln_generation_running_sequences", "chat") == 0, what="slot freed")
    assert metric(server, "kiln_generation_kv_cache_reserved_tokens", "chat") == 0


def test_support_hand_off_is_unchanged_and_streams_its_final_event_alone(server: Running) -> None:
    handed = server.post("/v1/apps/picky:answer", {"text": UNRELATED})
    assert handed.status_code == 200
    body = handed.json()
    assert body["handoff"] is True and body["reason"] == "no_faq_match"
    assert "no FAQ question closer than 0.99" in body["detail"]
    assert not {"answer", "sources", "chat_model"} & set(body)
    assert streamed(server, "picky", UNRELATED) == [body, "[DONE]"]


def test_support_without_a_chat_package_answers_verbatim_and_refuses_to_stream(server: Running) -> None:
    resp = server.post("/v1/apps/verbatim:answer", {"text": "Can I close my account?"})
    assert resp.status_code == 200
    assert resp.json()["answer"] == "Yes, in Settings > Close account." and "sources" not in resp.json()
    refused = server.post("/v1/apps/verbatim:answer", {"text": "Can I close my account?", "stream": True})
    assert refused.status_code == 400 and refused.json()["error"].startswith("stream:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "hi", "stream": "yes"}, "stream"),
        ({"text": "hi", "stream": 1}, "stream"),
        ({"text": "hi", "top_k": 5}, "top_k"),
    ],
)
def test_support_answer_refuses_bad_fields_naming_them(server: Running, body: dict[str, Any], field: str) -> None:
    resp = server.post("/v1/apps/grounded:answer", body)
    assert resp.status_code == 422 and resp.json()["error"].startswith(f"{field}:")


def test_support_loads_a_chat_model_the_server_does_not_serve(packages: dict[str, Path]) -> None:
    with serving(ServeConfig(models=[ModelConfig(name="grounded", versions={1: str(packages["grounded"])})])) as server:
        assert [m["id"] for m in server.get("/v1/models").json()["data"]] == ["grounded"]
        resp = server.post("/v1/apps/grounded:answer", {"text": "How do I reset my PIN?"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["chat_model"] == "chat@1"
        assert sorted(m["id"] for m in server.get("/v1/models").json()["data"]) == ["chat", "grounded"]
        assert metric(server, "kiln_generation_completion_tokens_total", "chat") > 0


def test_support_package_records_a_registry_chat_reference_and_its_digest(
    tmp_path: Path, packages: dict[str, Path]
) -> None:
    with Registry() as registry:
        version = registry.register(packages["chat"], name="helpdesk-chat")
        registry.set_alias("helpdesk-chat", "production", version.version)
    recipe = support_recipe(tmp_path, chat_package="helpdesk-chat@production", top_k=4)
    manifest, _ = build_support_package(recipe, packages["classifier"], tmp_path / "app")
    chat_manifest = json.loads((packages["chat"] / "kiln.json").read_text())
    grounding = manifest["app"]["grounding"]
    assert grounding["chat"] == {
        "reference": "helpdesk-chat@production",
        "source": "helpdesk-chat@production",
        "name": "helpdesk-chat",
        "digest": package_digest(chat_manifest),
    }
    assert grounding["top_k"] == 4 and "{entries}" in grounding["prompt"]
    digest = package_digest(chat_manifest)
    assert manifest["lineage"]["chat"] == {"reference": "helpdesk-chat@production", "digest": digest}


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("missing-chat@production", "support.chat_package: 'missing-chat@production' cannot be used"),
        ("classifier", "is a text-classification package; answers need a text-generation package"),
        ("plain-lm", "has no chat template"),
    ],
)
def test_support_build_refuses_an_unusable_chat_package(
    tmp_path: Path, packages: dict[str, Path], reference: str, message: str
) -> None:
    if reference == "classifier":
        reference = str(packages["classifier"])
    elif reference == "plain-lm":
        reference = str(tiny_generation_package(tmp_path / "plain-lm", chat_template=None))
    recipe = support_recipe(tmp_path, chat_package=reference)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_support_package(recipe, packages["classifier"], tmp_path / "app")
    assert not (tmp_path / "app").exists()


def test_kiln_run_refuses_a_missing_chat_package_before_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = kiln_cli("run", "recipes/support.yaml", "support.chat_package=nowhere@production",
                      f"train.output_dir={out}", cwd=ROOT)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "support.chat_package: 'nowhere@production' cannot be used" in result.stderr
    assert not out.exists()
