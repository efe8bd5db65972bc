"""Grounded answers: the FAQ entries retrieved for a message, numbered, in a chat model's prompt.

Retrieval-augmented generation (Lewis et al. 2020) in its plainest form: the nearest FAQ entries
go into the system prompt, numbered, and the customer's message is the user turn. The same
prompt is built by the server and by the benchmark that measures the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiln.runtime.retrieval import Answer, FaqIndex


def retrieve_entries(index: FaqIndex, text: str, *, top_k: int, min_score: float) -> list[Answer]:
    """The ``top_k`` nearest FAQ entries of ``text`` that score ``min_score`` or more, nearest first."""
    return answering_entries(index.search_top(text, top_k), min_score=min_score)


def answering_entries(nearest: Sequence[Answer], *, min_score: float) -> list[Answer]:
    """The entries of ``nearest`` that score ``min_score`` or more, in their order."""
    return [entry for entry in nearest if entry.score >= min_score]


def format_entries(entries: Sequence[Answer]) -> str:
    """The entries as the prompt shows them: ``[1] Question: ...`` then ``Answer: ...``, numbered from 1."""
    return "\n\n".join(
        f"[{number}] Question: {entry.question}\nAnswer: {entry.answer}" for number, entry in enumerate(entries, 1)
    )


def grounded_messages(template: str, text: str, entries: Sequence[Answer]) -> list[dict[str, str]]:
    """The chat messages of a grounded answer: the system prompt with the entries, then the message."""
    system = template.replace("{entries}", format_entries(entries))
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def entry_sources(entries: Sequence[Answer]) -> list[dict[str, Any]]:
    """What an answer cites: each entry's id (its row in the package's faq.csv), question and score."""
    return [{"id": entry.row, "question": entry.question, "score": entry.score} for entry in entries]
