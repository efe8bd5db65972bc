"""Out-of-scope hand-off over real HTTP: a support package built with a CSV of real out-of-scope
messages answers in-scope messages and hands off the rest, naming the reason and both scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.apps.support import build_support_package
from kiln.config import parse_recipe
from kiln.errors import DataError
from kiln.runtime import load_classifier
from kiln.serve.config import ModelConfig, ServeConfig
from tests.conftest import make_text_package
from tests.helpers import kiln_cli
from tests.integration.serve_harness import Running, serving

INTENTS = {
    "neg": ["my card has not arrived", "where is my new card", "card still not delivered", "card delivery is late"],
    "pos": ["how do i reset my pin", "i forgot my pin number", "change my card pin", "pin reset please"],
}
OUT_OF_SCOPE = [
    "what is the weather in paris tomorrow", "recommend a good pizza place", "play some jazz music",
    "who won the football game last night", "book a table for two at seven", "tell me a funny joke",
]  # fmt: skip
FAQ = "question,answer\nHow do I reset my PIN?,Open the app and choose Card > Reset PIN.\n"


def recipe(root: Path, **out_of_scope: object) -> object:
    rows = [(text, label) for label, texts in INTENTS.items() for text in texts for _ in range(5)]
    data = root / "messages.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    examples = root / "oos.csv"
    examples.write_text("text\n" + "".join(f"{t}\n" for t in OUT_OF_SCOPE))
    faq = root / "faq.csv"
    faq.write_text(FAQ)
    section = {"method": "knn", "k": 1, "objective": "f1", "examples_file": str(examples), **out_of_scope}
    return parse_recipe(
        {
            "name": "support-oos",
            "data": {"train_file": str(data), "drop_duplicates": False, "val_fraction": 0.4, "test_fraction": 0.2},
            "model": {"kind": "bert", "size": "tiny", "vocab_size": 200, "max_length": 32},
            "support": {"faq_file": str(faq), "target_accuracy": 0.01, "min_answer_score": -1.0,
                        "out_of_scope": section},
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("support-oos")
    classifier = make_text_package(root / "intents")
    manifest, report = build_support_package(recipe(root), classifier, root / "support")  # type: ignore[arg-type]
    return root / "support", {"manifest": manifest, "report": report}


@pytest.fixture(scope="module")
def server(built: tuple[Path, dict[str, object]]) -> Iterator[Running]:
    with serving(ServeConfig(models=[ModelConfig(name="support", versions={1: str(built[0])})])) as running:
        yield running


def test_build_stores_the_score_and_fits_its_threshold_on_the_examples(built: tuple[Path, dict]) -> None:
    path, out = built
    section = out["manifest"]["app"]["out_of_scope"]
    assert section["method"] == "knn" and section["label"] == "oos"
    assert "out_of_scope.safetensors" in out["manifest"]["files"]
    calibration = out["report"]["out_of_scope"]
    assert calibration["examples"] == {"n": len(OUT_OF_SCOPE), "oos_recall": 1.0}
    assert calibration["validation_inscope_handoff"] == 0.0
    # The runtime computes the same score from the package alone, with the prediction.
    outputs = load_classifier(path).predict([OUT_OF_SCOPE[0], INTENTS["pos"][0]])
    assert outputs[0]["oos_score"] > section["threshold"] >= outputs[1]["oos_score"]


def test_answer_hands_off_an_out_of_scope_message_with_the_reason_and_both_scores(server: Running) -> None:
    resp = server.post("/v1/apps/support:answer", {"text": OUT_OF_SCOPE[1]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["handoff"] is True and body["reason"] == "out_of_scope" and "answer" not in body
    assert body["oos_score"] > body["oos_threshold"] and 0 < body["confidence"] <= 1
    assert "knn out-of-scope score" in body["detail"]


def test_answer_answers_an_in_scope_message_and_still_shows_both_scores(server: Running) -> None:
    body = server.post("/v1/apps/support:answer", {"text": "how do i reset my pin"}).json()
    assert body["handoff"] is False and body["answer"].startswith("Open the app")
    assert body["oos_score"] <= body["oos_threshold"] and "reason" not in body


def test_predict_endpoint_keeps_its_shape_for_a_support_package(server: Running) -> None:
    body = server.post("/v1/models/support:predict", {"inputs": ["play some jazz music"]}).json()
    assert set(body["outputs"][0]) == {"label", "scores", "truncated"}


def test_build_names_a_bad_examples_file(tmp_path: Path) -> None:
    classifier = make_text_package(tmp_path / "intents")
    bad = tmp_path / "bad.csv"
    bad.write_text("message\nhello\n")
    with pytest.raises(DataError, match="column 'text' \\(data.text_column\\) not found"):
        build_support_package(recipe(tmp_path, examples_file=str(bad)), classifier, tmp_path / "app")  # type: ignore[arg-type]
    assert not (tmp_path / "app").exists()


@pytest.mark.parametrize("label", ["oos", "out_of_scope"])
def test_kiln_eval_reports_open_intent_metrics_for_out_of_scope_rows(
    built: tuple[Path, dict], tmp_path: Path, label: str
) -> None:
    rows = [(t, intent) for intent, texts in INTENTS.items() for t in texts] + [(t, label) for t in OUT_OF_SCOPE]
    data = tmp_path / "eval.csv"
    data.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    extra = [] if label == "oos" else ["--oos-label", label]
    printed = kiln_cli("eval", str(built[0]), "--data", str(data), *extra, "--output-dir", str(tmp_path / "ev"))
    assert printed.returncode == 0, printed.stderr
    assert "in-scope hand-off rate" in printed.stdout and "open-class F1" in printed.stdout
    assert f"8 in-scope rows, 6 labelled '{label}'" in printed.stdout
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    opened = report["open_intent"]
    assert (opened["inscope_handoff_rate"], opened["oos_recall"], opened["open_f1"]) == (0.0, 1.0, 1.0)
    assert report["n"] == 8  # accuracy and the per-class table cover the in-scope rows


def test_kiln_eval_refuses_data_with_only_out_of_scope_rows(built: tuple[Path, dict], tmp_path: Path) -> None:
    data = tmp_path / "eval.csv"
    data.write_text("text,label\n" + "".join(f"{t},oos\n" for t in OUT_OF_SCOPE))
    printed = kiln_cli("eval", str(built[0]), "--data", str(data))
    assert printed.returncode != 0 and "every row is labelled 'oos'" in printed.stderr
