"""Language-model data through ``kiln.data.load_language_data``: built-ins, user files, splits, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kiln.config.schema import Recipe
from kiln.data import LanguageData, load_language_data
from kiln.errors import DataError


def _recipe(*, seed: int = 42, objective: str = "auto", **data: Any) -> Recipe:
    return Recipe.model_validate(
        {"name": "lm", "seed": seed, "task": "text-generation", "model": {"kind": "gpt"}, "data": data,
         "lm": {"objective": objective}}
    )  # fmt: skip


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    frame = pd.DataFrame(rows)
    fmt = path.suffix.lstrip(".")
    if fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif fmt in ("csv", "tsv"):
        frame.to_csv(path, index=False, sep="," if fmt == "csv" else "\t")
    else:
        frame.to_parquet(path)
    return path


def _everything(data: LanguageData) -> list[Any]:
    return [*data.train, *data.validation, *data.test]


def _pairs(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(n)]


def test_load_language_data_wiki_summaries_is_pretrain_documents() -> None:
    data = load_language_data(_recipe(dataset="wiki_summaries"))
    assert data.objective == "pretrain"
    assert data.stats["loaded"] == 10_033
    assert data.stats["train"] + data.stats["validation"] + data.stats["test"] == data.stats["after_dedup"]
    assert (data.stats["validation"], data.stats["test"]) == (803, 2007)
    assert all(isinstance(doc, str) and doc == doc.strip() and doc for doc in _everything(data))
    assert sum(len(doc) for doc in _everything(data)) > 4_800_000
    assert "wiki_summaries" in data.origin


def test_load_language_data_chatterbot_qa_is_unique_question_answer_conversations() -> None:
    data = load_language_data(_recipe(dataset="chatterbot_qa"))
    assert data.objective == "sft"
    conversations = _everything(data)
    assert len(conversations) > 700
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in conversations)
    questions = [c[0]["content"].lower() for c in conversations]
    assert len(set(questions)) == len(questions)


@pytest.mark.parametrize(("dataset", "objective"), [("wiki_summaries", "sft"), ("chatterbot_qa", "pretrain")])
def test_load_language_data_builtin_with_wrong_objective_is_refused(dataset: str, objective: str) -> None:
    with pytest.raises(DataError, match=f"{dataset}: holds .* not {objective} \\(set lm.objective\\)"):
        load_language_data(_recipe(dataset=dataset, objective=objective))


def test_load_language_data_unknown_builtin_lists_available() -> None:
    with pytest.raises(DataError, match="'nope'; available: chatterbot_qa, wiki_summaries"):
        load_language_data(_recipe(dataset="nope"))


def test_load_language_data_same_seed_same_splits_other_seed_other_splits() -> None:
    first = load_language_data(_recipe(dataset="chatterbot_qa"))
    again = load_language_data(_recipe(dataset="chatterbot_qa"))
    other = load_language_data(_recipe(dataset="chatterbot_qa", seed=7))
    assert first == again
    assert first.fingerprint.startswith("sha256:") and len(first.fingerprint) == 71
    assert other.fingerprint != first.fingerprint and other.train != first.train
    assert sorted(map(str, _everything(other))) == sorted(map(str, _everything(first)))


def test_load_language_data_txt_is_one_document_per_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    lines = [f"Document number {i} says something." for i in range(20)]
    path.write_bytes(("\r\n".join(lines[:10]) + "\n\n   \n" + "\n".join(lines[10:]) + "\n").encode())
    data = load_language_data(_recipe(train_file=str(path)))
    assert data.objective == "pretrain"
    assert sorted(_everything(data)) == sorted(lines)
    assert data.stats["empty_dropped"] == 3  # the blank line, the spaces, the end after the last newline
    assert data.origin == str(path)


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "tsv", "parquet"])
def test_load_language_data_prompt_response_columns_give_sft(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"pairs.{suffix}", [{"prompt": "Hi, tab\there?", "response": "Yes, «here».", "x": 1}])
    _write(path, [*_pairs(19), {"prompt": "Hi, tab\there?", "response": "Yes, «here».", "x": 1}])
    data = load_language_data(_recipe(train_file=str(path)))
    assert data.objective == "sft"
    conversations = _everything(data)
    assert len(conversations) == 20
    assert (
        {"role": "user", "content": "Hi, tab\there?"},
        {"role": "assistant", "content": "Yes, «here»."},
    ) in conversations


def test_load_language_data_jsonl_text_gives_pretrain(tmp_path: Path) -> None:
    path = _write(tmp_path / "docs.jsonl", [{"body": f"text {i}"} for i in range(10)] + [{"body": None}])
    data = load_language_data(_recipe(train_file=str(path), text_column="body"))
    assert data.objective == "pretrain" and len(_everything(data)) == 10 and data.stats["empty_dropped"] == 1


def test_load_language_data_messages_column_keeps_roles_and_drops_extra_keys(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"q{i}", "name": "ann"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(10)
    ]
    path = _write(tmp_path / "chat.jsonl", [*rows, {"messages": []}])
    data = load_language_data(_recipe(train_file=str(path)))
    assert data.objective == "sft" and data.stats["empty_dropped"] == 1
    assert (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
    ) in _everything(data)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_load_language_data_messages_from_csv_json_text_and_parquet_lists(tmp_path: Path, suffix: str) -> None:
    messages = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(10)]
    cells = [json.dumps(m) for m in messages] if suffix == "csv" else messages
    path = _write(tmp_path / f"chat.{suffix}", [{"conv": cell} for cell in cells])
    data = load_language_data(_recipe(train_file=str(path), messages_column="conv"))
    assert sorted(map(str, _everything(data))) == sorted(str(tuple(m)) for m in messages)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"role": "user", "content": "q"}],
            r"row 2, column 'messages': needs a prompt and then the assistant's reply",
        ),
        ([{"role": "bot", "content": "q"}], r"row 2, column 'messages': message 0 has role 'bot'; use system, user"),
        ([{"role": "user"}], r"row 2, column 'messages': message 0 is not a \{'role'"),
        ("not json", r"row 2, column 'messages': not a JSON list of messages"),
    ],
)
def test_load_language_data_bad_messages_name_row_and_column(tmp_path: Path, rows: Any, message: str) -> None:
    good = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = _write(tmp_path / "chat.jsonl", [{"messages": good}, {"messages": rows}])
    with pytest.raises(DataError, match=message):
        load_language_data(_recipe(train_file=str(path)))


def test_load_language_data_pretrain_without_text_column_names_file_and_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.csv", _pairs(10))
    with pytest.raises(DataError) as info:
        load_language_data(_recipe(train_file=str(path), objective="pretrain"))
    assert str(info.value) == (
        f"{path}: objective pretrain needs the text column 'text', not found (set data.text_column); "
        "columns are prompt, response"
    )


def test_load_language_data_sft_without_columns_names_what_is_missing(tmp_path: Path) -> None:
    path = _write(tmp_path / "half.jsonl", [{"prompt": "q", "text": "t"}] * 10)
    with pytest.raises(DataError) as info:
        load_language_data(_recipe(train_file=str(path), objective="sft"))
    assert str(info.value).startswith(
        f"{path}: objective sft needs prompt and response columns ('response' not found) or a messages column "
        "('messages' not found); columns are prompt, text"
    )


def test_load_language_data_auto_without_any_known_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "other.csv", [{"a": "x", "b": "y"}] * 10)
    with pytest.raises(DataError, match="no text column 'text', prompt/response columns .* columns are a, b"):
        load_language_data(_recipe(train_file=str(path)))


def test_load_language_data_sft_on_txt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("one\ntwo\n")
    with pytest.raises(DataError, match=f"{path}: a txt file holds plain documents .* objective sft needs"):
        load_language_data(_recipe(train_file=str(path), objective="sft"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "", "no documents"),
        ("blank.txt", "\n  \n\n", "no documents"),
        ("empty.jsonl", "", "the file has no rows"),
        ("empty.csv", "", "the file is empty"),
        ("blank.csv", 'text\n""\n" "\n', "no documents"),
        ("pairs.jsonl", '{"prompt": "q", "response": " "}\n', "no prompt/response pairs with both texts"),
    ],
)
def test_load_language_data_empty_data_is_refused(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=f"{path}: {message}"):
        load_language_data(_recipe(train_file=str(path)))


@pytest.mark.parametrize("name", ["latin.txt", "latin.jsonl"])
def test_load_language_data_undecodable_bytes_name_file_and_encoding(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    text = "Caf\xe9 cr\xe8me br\xfbl\xe9e.\n"
    path.write_bytes(
        (text if name.endswith("txt") else json.dumps({"text": text}, ensure_ascii=False)).encode("latin-1")
    )
    with pytest.raises(DataError, match=f"{path}: bytes at offset \\d+ cannot be decoded as utf-8"):
        load_language_data(_recipe(train_file=str(path)))
    if name.endswith("txt"):
        path.write_bytes((text * 3 + "Crème.\n").encode("latin-1"))
        data = load_language_data(_recipe(train_file=str(path), encoding="latin-1", drop_duplicates=False))
        assert "Café crème brûlée." in _everything(data)


def test_load_language_data_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        load_language_data(_recipe(train_file=str(tmp_path / "nope.jsonl")))


def test_load_language_data_splits_are_disjoint_with_the_fractions(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", _pairs(100))
    data = load_language_data(_recipe(train_file=str(path), val_fraction=0.1, test_fraction=0.25))
    assert (len(data.train), len(data.validation), len(data.test)) == (67, 8, 25)
    keys = [c[0]["content"] for c in _everything(data)]
    assert len(set(keys)) == 100


def test_load_language_data_drops_duplicates_unless_told_not_to(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join([f"doc {i}" for i in range(10)] * 2))
    data = load_language_data(_recipe(train_file=str(path)))
    assert (data.stats["loaded"], data.stats["after_dedup"], len(_everything(data))) == (20, 10, 10)
    kept = load_language_data(_recipe(train_file=str(path), drop_duplicates=False))
    assert len(_everything(kept)) == 20


def test_load_language_data_max_examples_samples_with_the_seed(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", _pairs(200))
    data = load_language_data(_recipe(train_file=str(path), max_examples=50))
    assert len(_everything(data)) == 50 and data.stats["after_dedup"] == 200
    assert data == load_language_data(_recipe(train_file=str(path), max_examples=50))


def test_load_language_data_test_file_is_the_test_split(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", _pairs(30))
    test = _write(tmp_path / "test.jsonl", [{"prompt": "held out?", "response": "yes."}])
    data = load_language_data(_recipe(train_file=str(train), test_file=str(test)))
    assert data.test == [({"role": "user", "content": "held out?"}, {"role": "assistant", "content": "yes."})]
    assert len(data.train) + len(data.validation) == 30


def test_load_language_data_test_file_must_fit_the_objective(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", _pairs(30))
    test = _write(tmp_path / "test.jsonl", [{"text": "a document"}])
    with pytest.raises(DataError, match=f"{test}: objective sft needs prompt and response columns"):
        load_language_data(_recipe(train_file=str(train), test_file=str(test)))


def test_load_language_data_too_few_examples_for_the_splits(tmp_path: Path) -> None:
    path = tmp_path / "two.txt"
    path.write_text("one\ntwo\n")
    with pytest.raises(DataError, match=f"{path}: the validation split is empty; use more data"):
        load_language_data(_recipe(train_file=str(path)))


def test_load_language_data_fingerprint_follows_content(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", _pairs(20))
    before = load_language_data(_recipe(train_file=str(path))).fingerprint
    _write(path, [*_pairs(19), {"prompt": "question 19?", "response": "a different answer."}])
    assert load_language_data(_recipe(train_file=str(path))).fingerprint != before


def test_language_data_modules_import_without_torch_or_transformers() -> None:
    code = (
        "import sys, kiln.data, kiln.data.chat, kiln.data.corpus, kiln.data.tokenizer; "
        "print(sorted({'torch', 'transformers', 'peft', 'gguf', 'accelerate'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
