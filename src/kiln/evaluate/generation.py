"""Evaluation of a text-generation package: perplexity on held-out text, and for instruction data
ROUGE-L and exact match of greedy answers to test prompts.

Perplexity counts tokens the way training does (``kiln.train.lm``): pretraining text is packed
into rows of ``min(lm.sequence_length, context length)`` tokens joined by end-of-text, and every
token after a row's first is a target; a conversation is rendered through the package's chat
template (after the system prompt: the recipe's ``lm.system_prompt``, else the one the package
was fine-tuned with, ``preprocessing.system_prompt``) and only its response tokens, the closing
end-of-text included, are targets. The loss is the summed negative log-likelihood of the targets
over their count (``Generator.score``), and the perplexity its exponential.

Answers are greedy (temperature 0, the package's other generation defaults kept) for the first
``lm.eval_prompts`` test conversations, scored against the reference reply: ROUGE-L F1 (Lin
2004, with Google's ``rouge_score``, which keeps the letters and digits of each word, lower-cased)
and exact match after stripping, case folding and collapsing whitespace.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config.schema import LanguageModelConfig, Recipe
from kiln.data.chat import with_system
from kiln.errors import DataError

if TYPE_CHECKING:
    from kiln.evaluate import EvalResult, EvaluationConfig
    from kiln.runtime.generation import Generator

log = logging.getLogger(__name__)

TASK = "text-generation"
ANSWERS_NAME = "answers.jsonl"
# Test prompts whose prompts are also the timed inputs of --speed.
SPEED_PROMPTS = 16
# Tokens of a test document's start used as a timed prompt for a pretrained (non-chat) package.
DOCUMENT_PROMPT_TOKENS = 32

Conversation = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class GenerationData:
    """Held-out text of one evaluation and where it came from."""

    objective: str  # "pretrain": documents; "sft": conversations whose last message is the reference
    documents: list[str]  # pretrain only
    conversations: list[Conversation]  # sft only
    source: str  # for the report: "test split of ..." or the --data file
    fingerprint_matches: bool | None  # the recipe's data is still the package's; None for --data


def run_generation(cfg: EvaluationConfig, manifest: Mapping[str, Any]) -> EvalResult:
    """Score a text-generation package and write ``report.json`` (and ``answers.jsonl`` for sft).

    Raises:
        DataError: the evaluation data cannot be read, lacks its columns, or is too short.
        PackageError: the package cannot be loaded.
    """
    from kiln.evaluate import EvalResult
    from kiln.evaluate.decode_speed import measure_generation_package
    from kiln.runtime.generation import load_generator
    from kiln.runtime.measures import package_size_bytes

    lm = language_settings(manifest, cfg.package)
    data = generation_data(cfg, manifest)
    speed = None
    if cfg.measure_speed:
        # Timed before the package is loaded for scoring, so the peak-memory growth is its own.
        speed = measure_generation_package(
            cfg.package, _speed_prompts(data, lm, manifest, cfg.package), num_threads=cfg.num_threads
        )
    generator = load_generator(cfg.package)
    scored = perplexity(generator, data, lm)
    answers = answer_records(generator, data.conversations[: lm.eval_prompts], lm, batch_size=cfg.batch_size)
    report: dict[str, Any] = {
        "task": TASK,
        "package": str(cfg.package),
        "name": manifest.get("name"),
        "data": data.source,
        "data_fingerprint_matches": data.fingerprint_matches,
        "objective": data.objective,
        "n": len(data.documents) if data.objective == "pretrain" else len(data.conversations),
        **scored,
        **(answer_metrics(answers) if data.objective == "sft" else {}),
        "size_mb": package_size_bytes(cfg.package) / 1e6,
        **({"speed": speed} if speed is not None else {}),
    }
    out = cfg.output_dir or cfg.package.parent / f"{cfg.package.name}-eval"
    out.mkdir(parents=True, exist_ok=True)
    if answers:
        lines = "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        (out / ANSWERS_NAME).write_text(lines, encoding="utf-8")
    else:
        (out / ANSWERS_NAME).unlink(missing_ok=True)  # an earlier evaluation's answers are not this one's
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return EvalResult(report=report, output_dir=out)


def generation_quality(report: Mapping[str, Any]) -> dict[str, float]:
    """The data-dependent metrics a promotion rule may name, from a text-generation report."""
    names = ("perplexity", "loss", "rouge_l", "exact_match")
    return {name: float(report[name]) for name in names if name in report}


def language_settings(manifest: Mapping[str, Any], package: Path) -> LanguageModelConfig:
    """The ``lm`` section of the package's recipe, or its defaults when it records no recipe."""
    recipe = package_recipe(manifest, package)
    return recipe.lm if recipe is not None else LanguageModelConfig()


def package_recipe(manifest: Mapping[str, Any], package: Path) -> Recipe | None:
    """The recipe recorded in the package's manifest, validated; None when there is none."""
    from kiln.config import parse_recipe

    raw = manifest.get("recipe")
    return parse_recipe(dict(raw), source=f"{package}/kiln.json recipe") if raw else None


def generation_data(cfg: EvaluationConfig, manifest: Mapping[str, Any]) -> GenerationData:
    """The held-out text: ``cfg.data_file``, or the test split of the package's recipe.

    Raises:
        DataError: no recipe and no file, a missing file or column, or no usable row.
    """
    if cfg.data_file is not None:
        return _file_data(cfg)
    from kiln.data import load_language_data

    recipe = package_recipe(manifest, cfg.package)
    if recipe is None:
        raise DataError(
            f"{cfg.package}: the package records no recipe; pass --data FILE with "
            f"{cfg.prompt_column!r}/{cfg.response_column!r} (or {cfg.text_column!r}) columns to evaluate it"
        )
    language = load_language_data(recipe)
    test: list[Any] = list(language.test)
    return GenerationData(
        objective=language.objective,
        documents=[str(t) for t in test] if language.objective == "pretrain" else [],
        conversations=test if language.objective == "sft" else [],
        source=f"test split of {language.origin}",
        fingerprint_matches=language.fingerprint == manifest.get("data_fingerprint"),
    )


def perplexity(generator: Generator, data: GenerationData, lm: LanguageModelConfig) -> dict[str, Any]:
    """``loss`` (mean target-token NLL, nats), ``perplexity`` and the ``tokens`` counted.

    Raises:
        DataError: the text holds too few tokens for one packed row, or no target token.
    """
    from kiln.data.chat import token_rows

    is_pretraining = data.objective == "pretrain"
    ids, masks = token_rows(
        generator.tokenizer,
        data.documents if is_pretraining else data.conversations,
        sequence_length=min(lm.sequence_length, generator.context_length),
        eos_token=generator.special_tokens["eos_token"],
        chat_template=None if is_pretraining else _chat_template(generator),
        special_tokens=generator.special_tokens,
        system_prompt=system_prompt(generator, lm),
    )
    nll, count = generator.score([row.tolist() for row in ids], loss_mask=[m.tolist() for m in masks])
    if count == 0:
        raise DataError(f"{data.source}: no target tokens to score")
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def answer_records(
    generator: Generator, conversations: Sequence[Conversation], lm: LanguageModelConfig, *, batch_size: int
) -> list[dict[str, Any]]:
    """Greedy answers to each conversation's prompt with their reference and scores, one record each."""
    if not conversations:
        return []
    _chat_template(generator)
    prompts = [list(with_system(c[:-1], system_prompt(generator, lm))) for c in conversations]
    answers = []
    for start in range(0, len(prompts), batch_size):
        answers += generator.generate(prompts[start : start + batch_size], temperature=0.0)
    references = [c[-1]["content"] for c in conversations]
    rouge = rouge_l([a.text for a in answers], references)
    return [
        {
            "prompt": conversation[-2]["content"],
            "reference": reference,
            "answer": answer.text,
            "rouge_l": score,
            "exact_match": is_exact_match(answer.text, reference),
            "new_tokens": answer.new_tokens,
            "finish_reason": answer.finish_reason,
        }
        for conversation, reference, answer, score in zip(conversations, references, answers, rouge, strict=True)
    ]


def answer_metrics(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ROUGE-L F1 and exact-match share over the answered prompts."""
    if not answers:
        return {}
    return {
        "rouge_l": sum(a["rouge_l"] for a in answers) / len(answers),
        "exact_match": sum(bool(a["exact_match"]) for a in answers) / len(answers),
        "answered": len(answers),
    }


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (``rouge_score``, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [
        float(scorer.score(reference, prediction)["rougeL"].fmeasure)
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def normalise_answer(text: str) -> str:
    """Text as exact match compares it: stripped, case-folded, runs of whitespace made one space."""
    return " ".join(text.split()).casefold()


def is_exact_match(prediction: str, reference: str) -> bool:
    """Whether the answer equals the reference once both are normalised."""
    return normalise_answer(prediction) == normalise_answer(reference)


def system_prompt(generator: Generator, lm: LanguageModelConfig) -> str | None:
    """The system message put before evaluation prompts: the recipe's, else the package's own."""
    return lm.system_prompt if lm.system_prompt is not None else generator.system_prompt


def _chat_template(generator: Generator) -> str:
    if generator.chat_template is None:
        raise DataError(
            f"{generator.path}: the package has no chat template, so it cannot be scored on "
            "prompt/response pairs; evaluate it on plain text (a text column or a pretraining recipe)"
        )
    return generator.chat_template


def _speed_prompts(
    data: GenerationData, lm: LanguageModelConfig, manifest: Mapping[str, Any], package: Path
) -> list[Any]:
    """Timed prompts: test prompts (chat messages), or the first tokens of test documents."""
    if data.objective == "sft":  # without lm.system_prompt, Generator.render puts in the package's own
        return [list(with_system(c[:-1], lm.system_prompt)) for c in data.conversations[:SPEED_PROMPTS]]
    from tokenizers import Tokenizer

    from kiln.runtime.package import packaged_file

    preprocessing = manifest.get("preprocessing") or {}
    tokenizer = Tokenizer.from_file(str(packaged_file(package, dict(manifest), preprocessing.get("tokenizer_file"))))
    prompts = [
        tokenizer.decode(e.ids[:DOCUMENT_PROMPT_TOKENS])
        for e in tokenizer.encode_batch(data.documents[:SPEED_PROMPTS], add_special_tokens=False)
    ]
    return [p for p in prompts if p] or [data.documents[0]]


def _file_data(cfg: EvaluationConfig) -> GenerationData:
    """Prompt/response pairs (or documents in the text column) of a user file, every row held out."""
    from kiln.data.sources import read_table

    assert cfg.data_file is not None
    path = cfg.data_file
    frame = read_table(path, fmt=None, encoding=cfg.encoding, has_header=True)
    columns = [str(c) for c in frame.columns]
    pair = (cfg.prompt_column, cfg.response_column)
    present = [c for c in pair if c in columns]
    if not present and cfg.text_column in columns:
        documents = [t for t in (_cell(v) for v in frame[cfg.text_column].tolist()) if t]
        if not documents:
            raise DataError(f"{path}: column {cfg.text_column!r} holds no text")
        return GenerationData("pretrain", documents, [], str(path), None)
    if len(present) < 2:
        missing = ", ".join(repr(c) for c in pair if c not in columns)
        raise DataError(
            f"{path}: missing column {missing}; a text-generation package is evaluated on "
            f"{cfg.prompt_column!r}/{cfg.response_column!r} pairs (or documents in {cfg.text_column!r}); "
            f"columns are {', '.join(columns) or 'none'} (set --prompt-column/--response-column)"
        )
    conversations: list[Conversation] = []
    for prompt, response in zip(frame[cfg.prompt_column].tolist(), frame[cfg.response_column].tolist(), strict=True):
        prompt_text, response_text = _cell(prompt), _cell(response)
        if prompt_text and response_text:
            conversations.append(
                ({"role": "user", "content": prompt_text}, {"role": "assistant", "content": response_text})
            )
    if not conversations:
        raise DataError(f"{path}: no row has both a {cfg.prompt_column!r} and a {cfg.response_column!r} text")
    return GenerationData("sft", [], conversations, str(path), None)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()
