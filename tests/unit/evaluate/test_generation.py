"""Evaluation of text-generation packages through ``kiln.evaluate`` and the ``kiln eval`` / ``kiln compare`` CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import kiln.evaluate
from kiln.errors import DataError
from kiln.evaluate.compare import CompareError, compare_packages
from kiln.evaluate.decode_speed import measure_decoding
from kiln.evaluate.generation import is_exact_match, rouge_l
from kiln.runtime.measures import pareto_front
from tests.helpers import kiln_cli, tiny_byte_bpe, tiny_causal_lm

pytestmark = pytest.mark.timeout(300)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYSTEM_PROMPT = "You answer in a few words."
QUESTIONS = [
    ("what colour is the sky", "the sky is blue"),
    ("where do fish live", "fish live in water"),
    ("what do cats drink", "cats drink milk"),
    ("how many legs has a dog", "a dog has four legs"),
    ("what is the capital of france", "paris"),
    ("what do bees make", "bees make honey"),
    ("when does the sun rise", "in the morning"),
    ("what is ice made of", "frozen water"),
    ("which animal barks", "the dog barks"),
    ("what grows on trees", "leaves and fruit"),
    ("what do cows eat", "cows eat grass"),
    ("where is the moon at night", "in the sky"),
    ("what colour is grass", "grass is green"),
    ("who writes books", "authors write books"),
    ("what does a baker make", "bread and cakes"),
    ("what is snow", "frozen rain"),
    ("how hot is the sun", "very hot indeed"),
    ("what do birds build", "birds build nests"),
    ("what is a river", "flowing water"),
    ("what rings at the door", "the door bell"),
]
DOCUMENTS = [
    "the cat sat on the mat and looked at the door for a long time",
    "a dog ran in the park while the sun was warm and the wind was soft",
    "question and answer pairs teach a model to reply in a few words",
    "rivers flow to the sea and the sea is wide and deep and blue",
    "bread is made of flour water salt and yeast and baked in an oven",
] * 6


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _recipe(data_file: Path, **lm: Any) -> dict[str, Any]:
    return {
        "name": "tiny-lm",
        "seed": 5,
        "task": "text-generation",
        "data": {"train_file": str(data_file), "val_fraction": 0.1, "test_fraction": 0.3},
        "model": {"kind": "gpt", "size": "tiny", "max_length": 128},
        "lm": {"sequence_length": 48, "eval_prompts": 4, "latency_new_tokens": 6, **lm},
    }


def _package(
    dest: Path,
    recipe: dict[str, Any] | None,
    *,
    seed: int = 0,
    chat_template: bool = True,
    system_prompt: str | None = None,
) -> Path:
    """A tiny random Llama package whose manifest records ``recipe`` (and its data's fingerprint), if given."""
    from tokenizers import Tokenizer

    from kiln.config import parse_recipe
    from kiln.data import load_language_data
    from kiln.data.chat import DEFAULT_CHAT_TEMPLATE
    from kiln.runtime.generation import write_generation_package

    tokenizer_file = tiny_byte_bpe(dest.parent / f"{dest.name}-tokenizer.json")
    vocab_size = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    fingerprint = load_language_data(parse_recipe(recipe)).fingerprint if recipe else "sha256:" + "0" * 64
    write_generation_package(
        dest,
        model=tiny_causal_lm(vocab_size, context_length=128, seed=seed),
        tokenizer_file=tokenizer_file,
        chat_template=DEFAULT_CHAT_TEMPLATE if chat_template else None,
        manifest={
            "name": dest.name,
            "preprocessing": {
                "context_length": 128,
                "eos_token": "<|endoftext|>",
                "special_tokens": {"eos_token": "<|endoftext|>"},
                "system_prompt": system_prompt,
            },
            "generation": {"max_new_tokens": 8},
            "lineage": {"parent": None, "transformation": "train", "settings": {}},
            "metrics": {},
            "data_fingerprint": fingerprint,
            "recipe": recipe or {},
        },
    )
    return dest


@pytest.fixture(scope="module")
def chat_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat")
    data = _write_jsonl(root / "qa.jsonl", [{"prompt": q, "response": a} for q, a in QUESTIONS])
    return _package(root / "chat", _recipe(data, system_prompt=SYSTEM_PROMPT))


@pytest.fixture(scope="module")
def text_lm_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text-lm")
    data = _write_jsonl(root / "docs.jsonl", [{"text": f"{d} {i}"} for i, d in enumerate(DOCUMENTS)])
    return _package(root / "text-lm", _recipe(data, sequence_length=16), chat_template=False)


@pytest.fixture(scope="module")
def chat_eval(chat_package: Path, tmp_path_factory: pytest.TempPathFactory) -> kiln.evaluate.EvalResult:
    out = tmp_path_factory.mktemp("chat-eval")
    return kiln.evaluate.run(kiln.evaluate.EvaluationConfig(package=chat_package, output_dir=out))


@pytest.fixture(scope="module")
def chat_report(chat_eval: kiln.evaluate.EvalResult) -> dict[str, Any]:
    return chat_eval.report


def _hf_mean_loss(package: Path, rows: list[tuple[list[int], list[int]]]) -> float:
    """Mean target-token loss the way a transformers training step computes it: labels -100 off the mask."""
    import torch

    from kiln.runtime.generation import load_generator

    model = load_generator(package, device="cpu").model
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in rows:
            labels = torch.tensor([t if m else -100 for t, m in zip(ids, mask, strict=True)])
            targets = int((labels[1:] != -100).sum())
            out = model(input_ids=torch.tensor([ids]), labels=labels.unsqueeze(0))
            total += float(out.loss) * targets
            count += targets
    return total / count


def test_eval_generation_sft_scores_response_tokens_like_training(
    chat_package: Path, chat_report: dict[str, Any]
) -> None:
    from tokenizers import Tokenizer

    from kiln.config import parse_recipe
    from kiln.data import load_language_data
    from kiln.data.chat import DEFAULT_CHAT_TEMPLATE, sft_tokens

    recipe = parse_recipe(json.loads((chat_package / "kiln.json").read_text())["recipe"])
    test = load_language_data(recipe).test
    tokenizer = Tokenizer.from_file(str(chat_package / "tokenizer.json"))
    rows = []
    for conversation in test:
        ids, mask = sft_tokens(
            tokenizer,
            DEFAULT_CHAT_TEMPLATE,
            ({"role": "system", "content": SYSTEM_PROMPT}, *conversation),
            sequence_length=48,
            special_tokens={"eos_token": "<|endoftext|>"},
        )
        rows.append((ids.tolist(), mask.tolist()))

    assert chat_report["task"] == "text-generation" and chat_report["objective"] == "sft"
    assert chat_report["n"] == len(test) and chat_report["data_fingerprint_matches"] is True
    assert chat_report["tokens"] == sum(sum(m[1:]) for _, m in rows)
    assert chat_report["loss"] == pytest.approx(_hf_mean_loss(chat_package, rows), rel=1e-4)
    assert chat_report["perplexity"] == pytest.approx(math.exp(chat_report["loss"]))


def test_eval_generation_sft_answers_first_eval_prompts(chat_eval: kiln.evaluate.EvalResult) -> None:
    chat_report, out = chat_eval.report, chat_eval.output_dir
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert chat_report["answered"] == len(answers) == 4
    assert chat_report["rouge_l"] == pytest.approx(sum(a["rouge_l"] for a in answers) / 4)
    assert chat_report["exact_match"] == sum(a["exact_match"] for a in answers) / 4
    assert all(a["finish_reason"] in ("stop", "length") and a["new_tokens"] <= 8 for a in answers)
    assert json.loads((out / "report.json").read_text())["rouge_l"] == chat_report["rouge_l"]


def test_eval_generation_data_file_exact_match_and_rouge_of_greedy_answers(chat_package: Path, tmp_path: Path) -> None:
    from kiln.runtime.generation import load_generator

    generator = load_generator(chat_package, device="cpu")
    prompts = [q for q, _ in QUESTIONS[:12]]
    messages = [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}] for q in prompts]
    answers = [g.text for g in generator.generate(messages, temperature=0.0)]
    kept = [(p, a) for p, a in zip(prompts, answers, strict=True) if a.strip()][:3]
    assert len(kept) == 3, answers
    (p1, same), (p2, spaced), (p3, _) = kept
    # Case and runs of whitespace do not count; a different answer does.
    spaced = "  \t ".join(spaced.split()).upper() if spaced.isascii() else "   ".join(spaced.split())
    rows = [
        {"prompt": p1, "response": same},
        {"prompt": p2, "response": spaced},
        {"prompt": p3, "response": "zebra quantum violin"},
    ]
    data = _write_jsonl(tmp_path / "mine.jsonl", rows)
    report = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(package=chat_package, data_file=data, output_dir=tmp_path / "out")
    ).report
    assert report["data"] == str(data) and report["data_fingerprint_matches"] is None
    assert report["exact_match"] == pytest.approx(2 / 3)
    records = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [r["exact_match"] for r in records] == [True, True, False]
    assert records[0]["rouge_l"] == pytest.approx(rouge_l([same], [same])[0])


def test_eval_generation_data_file_uses_the_package_system_prompt(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from kiln.data.chat import DEFAULT_CHAT_TEMPLATE, sft_tokens

    package = _package(tmp_path / "own-system", None, system_prompt=SYSTEM_PROMPT)
    data = _write_jsonl(tmp_path / "qa.jsonl", [{"prompt": q, "response": a} for q, a in QUESTIONS[:5]])
    report = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(package=package, data_file=data, output_dir=tmp_path / "out")
    ).report
    tokenizer = Tokenizer.from_file(str(package / "tokenizer.json"))
    rows = []
    for question, answer in QUESTIONS[:5]:
        conversation = (
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        )
        ids, mask = sft_tokens(
            tokenizer,
            DEFAULT_CHAT_TEMPLATE,
            conversation,
            sequence_length=128,
            special_tokens={"eos_token": "<|endoftext|>"},
        )
        rows.append((ids.tolist(), mask.tolist()))
    assert report["loss"] == pytest.approx(_hf_mean_loss(package, rows), rel=1e-4)


def test_eval_generation_pretrain_scores_packed_documents(text_lm_package: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from kiln.config import parse_recipe
    from kiln.data import load_language_data

    (tmp_path / "answers.jsonl").write_text('{"answer": "from an earlier evaluation"}\n', encoding="utf-8")
    report = kiln.evaluate.run(kiln.evaluate.EvaluationConfig(package=text_lm_package, output_dir=tmp_path)).report
    recipe = parse_recipe(json.loads((text_lm_package / "kiln.json").read_text())["recipe"])
    tokenizer = Tokenizer.from_file(str(text_lm_package / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert eos is not None
    stream: list[int] = []
    for document in load_language_data(recipe).test:
        stream += [*tokenizer.encode(str(document), add_special_tokens=False).ids, eos]
    rows = [(stream[i : i + 16], [1] * 16) for i in range(0, len(stream) - 15, 16)]

    assert report["objective"] == "pretrain" and "rouge_l" not in report and "exact_match" not in report
    assert report["tokens"] == 15 * len(rows)
    assert report["loss"] == pytest.approx(_hf_mean_loss(text_lm_package, rows), rel=1e-4)
    assert kiln.evaluate.quality_metrics(report) == {"perplexity": report["perplexity"], "loss": report["loss"]}
    assert not (tmp_path / "answers.jsonl").exists()


def test_quality_metrics_of_generation_report_are_gate_names(chat_report: dict[str, Any]) -> None:
    metrics = kiln.evaluate.quality_metrics(chat_report)
    assert set(metrics) == {"perplexity", "loss", "rouge_l", "exact_match"}
    assert all(isinstance(v, float) for v in metrics.values())


def test_time_package_generation_returns_latency_metrics_and_restores_threads(chat_package: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    prompts: list[Any] = ["what colour is the sky", [{"role": "user", "content": "where do fish live"}]]
    timed = kiln.evaluate.time_package(chat_package, prompts, num_threads=1, latency_runs=3)
    assert set(timed) == {
        "ttft_ms",
        "tpot_ms",
        "p50_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "tokens_per_s",
        "size_mb",
    }
    assert 0 < timed["ttft_ms"] <= timed["p50_latency_ms"] <= timed["p95_latency_ms"] <= timed["p99_latency_ms"]
    assert timed["tpot_ms"] > 0 and timed["tokens_per_s"] > 0
    files = [p for p in chat_package.iterdir() if p.is_file()]
    assert timed["size_mb"] == pytest.approx(sum(p.stat().st_size for p in files) / 1e6)
    assert torch.get_num_threads() == threads


class _Ticks:
    """A clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_measure_decoding_splits_first_token_from_the_rest(chat_package: Path) -> None:
    from kiln.runtime.generation import load_generator

    generator = load_generator(chat_package, device="cpu")
    prompt = "what colour is the sky"
    count = generator.generate([prompt], max_new_tokens=6, temperature=0.0, stop=[])[0].new_tokens
    assert count >= 2
    # Readings per answer: the start, the first piece, the end: 1 s to the first token, 2 s in all.
    speed = measure_decoding(generator, [prompt], new_tokens=6, runs=4, warmup_runs=1, clock=_Ticks())
    assert speed["ttft_ms"]["p50"] == speed["ttft_ms"]["p99"] == 1000.0
    assert speed["latency_ms"]["mean"] == 2000.0
    assert speed["tpot_ms"]["p50"] == pytest.approx(1000.0 / (count - 1))
    assert speed["tokens_per_s"] == pytest.approx(count / 2.0)
    assert speed["ttft_ms"]["runs"] == 4 and speed["max_new_tokens"] == 6


def test_eval_cli_prints_generation_metrics(chat_package: Path, tmp_path: Path) -> None:
    proc = kiln_cli("eval", str(chat_package), "--output-dir", str(tmp_path / "a"), "--speed", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    for shown in ("perplexity", "ROUGE-L", "exact match", "TTFT p50 ms", "TPOT p50 ms", "answers.jsonl"):
        assert shown in proc.stdout
    assert "confusion" not in proc.stdout

    proc = kiln_cli("eval", str(chat_package), "--output-dir", str(tmp_path / "b"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["task"] == "text-generation" and report["perplexity"] > 1 and 0 <= report["rouge_l"] <= 1
    assert report["size_mb"] > 0 and "speed" not in report


def test_eval_cli_data_without_response_column_exits_2(chat_package: Path, tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "no-response.jsonl", [{"prompt": "hi", "answer": "hello"}] * 3)
    proc = kiln_cli("eval", str(chat_package), "--data", str(data), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(data) in proc.stderr and "'response'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_eval_generation_data_with_renamed_columns(chat_package: Path, tmp_path: Path) -> None:
    data = tmp_path / "pairs.csv"
    data.write_text("question,answer\nwhat is snow,frozen rain\nwhat is a river,flowing water\n", encoding="utf-8")
    report = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(
            package=chat_package,
            data_file=data,
            prompt_column="question",
            response_column="answer",
            output_dir=tmp_path / "out",
        )
    ).report
    assert report["n"] == report["answered"] == 2 and report["perplexity"] > 1


def test_eval_generation_package_without_chat_template_refuses_instruction_data(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "qa.jsonl", [{"prompt": q, "response": a} for q, a in QUESTIONS])
    bare = _package(tmp_path / "bare", _recipe(data), chat_template=False)
    with pytest.raises(DataError, match="no chat template"):
        kiln.evaluate.run(kiln.evaluate.EvaluationConfig(package=bare, output_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_eval_generation_package_without_recipe_needs_data_file(tmp_path: Path) -> None:
    package = _package(tmp_path / "no-recipe", None)
    with pytest.raises(DataError, match="records no recipe; pass --data FILE"):
        kiln.evaluate.run(kiln.evaluate.EvaluationConfig(package=package, output_dir=tmp_path / "out"))
    data = _write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCUMENTS])
    report = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(package=package, data_file=data, output_dir=tmp_path / "out")
    ).report
    assert report["objective"] == "pretrain" and report["n"] == len(DOCUMENTS) and report["perplexity"] > 1


def test_exact_match_normalises_case_and_whitespace() -> None:
    assert is_exact_match("  The Sky\tis\n blue ", "the sky is BLUE")
    assert not is_exact_match("the sky is blue.", "the sky is blue")


def test_rouge_l_is_f1_of_the_longest_common_subsequence() -> None:
    # LCS "the cat sat": precision 3/3, recall 3/6, F1 2/3.
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx([2 / 3])
    assert rouge_l(["blue"], ["green"]) == [0.0]


def test_compare_generation_lineage_plots_perplexity_against_tpot(chat_package: Path, tmp_path: Path) -> None:
    import kiln.compress

    kiln.compress.run(chat_package, output_dir=tmp_path / "chain", steps=["quantize-torch"])
    proc = kiln_cli("compare", "--lineage", str(tmp_path / "chain"), "-o", str(tmp_path / "cmp"), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    for shown in ("TPOT p50 ms", "perplexity", "torch/fp32", "torch/int8", "01-quantize-torch"):
        assert shown in proc.stdout
    assert (tmp_path / "cmp" / "perplexity_vs_tpot.png").read_bytes()[:8] == PNG_MAGIC
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = report["rows"]
    assert [(r["package"], r["precision"]) for r in rows] == [("chat", "fp32"), ("01-quantize-torch", "int8")]
    assert all(r["perplexity"] > 1 and r["tpot_p50_ms"] > 0 and r["parameters"] > 0 for r in rows)
    assert rows[1]["size_bytes"] < rows[0]["size_bytes"]
    assert report["pareto"] == pareto_front([(r["tpot_p50_ms"], -r["perplexity"]) for r in rows])


def test_compare_refuses_packages_of_different_tasks(chat_package: Path, text_package: Path, tmp_path: Path) -> None:
    with pytest.raises(CompareError, match="different tasks"):
        compare_packages([chat_package, text_package], output_dir=tmp_path / "cmp")


def test_eval_classifier_data_file_keeps_its_columns(text_package: Path, tmp_path: Path) -> None:
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\na fine film,pos\na dull film,neg\n", encoding="utf-8")
    report = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(package=text_package, data_file=data, output_dir=tmp_path / "out")
    ).report
    assert report["n"] == 2 and "accuracy" in report and "perplexity" not in report
    assert (tmp_path / "out" / "confusion_matrix.png").is_file()
