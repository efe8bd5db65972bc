"""Generated support answers against the FAQ answer returned verbatim, on held-out questions.

Run through ``python bench/apps.py --only support-generate [--questions 48]``.

Protocol. The FAQ is the one ``recipes/support.yaml`` answers from (``support.faq_file``, else
the chatterbot-corpus English pairs). Two sets of held-out questions, each with a reference
answer that the index holds:

- paraphrase: ``--questions`` entries drawn with a fixed seed, each asked as a paraphrase written
  mechanically from its question (lower-cased, its closing punctuation dropped, put in one of a
  few customer phrasings taken in turn); the entry stays in the index.
- shared answer: every question whose answer another FAQ question has too ("Will you die" /
  "Will you die?", "Who was the 37th President ..." / "Who was the only US President to
  resign?"), asked as it is with its own entry left out of the index, so the answer can only
  come from the other question.

Both systems retrieve with the recipe's encoder and
``support.top_k`` / ``support.min_answer_score``; a question whose nearest entry scores under
``min_answer_score`` is handed off by both and left out of the scores. The intent classifier is
not used: its BANKING77 intents do not cover the chatterbot topics, and the hand-off rule is
the same for both systems anyway.

- verbatim: the nearest entry's answer, as a support package without a chat package answers.
- generated: SmolLM2-135M-Instruct (the fp32 package Kiln converts, no training) answering the
  prompt the server builds (``kiln.runtime.grounding``: the recipe's grounding prompt with the
  ``top_k`` entries numbered), greedy, ``support.max_answer_tokens`` new tokens at most.

Scores against the reference answer: ROUGE-L F1 (``kiln.evaluate.generation.rouge_l``) and key
facts. A reference's key facts are its words that hold a digit or start with a capital letter,
stop words left out (``I``, ``The``, ``It`` ...); a fact is contained when the answer holds it
as a word, case-folded. Fact scores cover the references that have at least one key fact.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHRASINGS = (
    "{q}?",
    "hi, {q}?",
    "can you tell me {q}",
    "quick question: {q}?",
    "i was wondering, {q}? thanks",
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’&.-]*[A-Za-z0-9]|[A-Za-z0-9]")


@dataclass(frozen=True)
class Question:
    text: str  # the paraphrase asked
    row: int  # its FAQ entry
    reference: str  # the entry's answer


def paraphrase(question: str, turn: int) -> str:
    """The question lower-cased, closing punctuation dropped, in the ``turn``-th phrasing."""
    core = question.strip().rstrip("?.!").strip().lower()
    return PHRASINGS[turn % len(PHRASINGS)].format(q=core)


def key_facts(reference: str) -> set[str]:
    """The reference's words that hold a digit or start with a capital, stop words left out, case-folded."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = (w.strip(".-'’") for w in _WORD.findall(reference))
    return {
        w.casefold()
        for w in words
        if w and (any(c.isdigit() for c in w) or w[0].isupper()) and w.casefold() not in ENGLISH_STOP_WORDS
    }


def facts_contained(answer: str, facts: set[str]) -> int:
    """How many of ``facts`` the answer holds as words (case-folded)."""
    words = {w.strip(".-'’").casefold() for w in _WORD.findall(answer)}
    return len(facts & words)


def held_out_questions(questions: list[str], answers: list[str], count: int, seed: int) -> list[Question]:
    """``count`` entries drawn with ``seed``, each asked as a paraphrase of its question."""
    rows = random.Random(seed).sample(range(len(questions)), min(count, len(questions)))
    return [Question(paraphrase(questions[r], turn), r, answers[r]) for turn, r in enumerate(rows)]


def shared_answer_questions(questions: list[str], answers: list[str]) -> list[Question]:
    """Every question whose answer another FAQ question has too (asked as it is, its own entry left
    out of the index, so only the other question can bring the answer)."""
    counts = Counter(answers)
    return [Question(q, r, a) for r, (q, a) in enumerate(zip(questions, answers, strict=True)) if counts[a] > 1]


def without_row(index: Any, row: int) -> Any:
    """The index less one entry."""
    from kiln.runtime.retrieval import FaqIndex

    keep = [i for i in range(len(index.questions)) if i != row]
    return FaqIndex(
        questions=[index.questions[i] for i in keep],
        answers=[index.answers[i] for i in keep],
        embeddings=index.embeddings[keep],
        encoder=index.encoder,
    )


def bench_support_generate(home: Path, *, count: int, seed: int = 0, batch_size: int = 16) -> list[str]:
    from kiln.config import load_recipe
    from kiln.data.faq import load_faq
    from kiln.data.tokenizer import resolve_pretrained
    from kiln.runtime import load_generator
    from kiln.runtime.grounding import grounded_messages, retrieve_entries
    from kiln.runtime.retrieval import FaqIndex, SentenceEncoder

    root = Path(__file__).resolve().parents[1]
    cfg = load_recipe(root / "recipes" / "support.yaml").support
    assert cfg is not None
    faq_questions, faq_answers = load_faq(cfg.faq_file)
    encoder = SentenceEncoder(resolve_pretrained(cfg.encoder))
    index = FaqIndex(
        questions=faq_questions, answers=faq_answers, embeddings=encoder.encode(faq_questions), encoder=encoder
    )
    conditions = {
        "paraphrase": [
            (q, retrieve_entries(index, q.text, top_k=cfg.top_k, min_score=cfg.min_answer_score))
            for q in held_out_questions(faq_questions, faq_answers, count, seed)
        ],
        "shared answer, own entry left out": [
            (q, retrieve_entries(without_row(index, q.row), q.text, top_k=cfg.top_k, min_score=cfg.min_answer_score))
            for q in shared_answer_questions(faq_questions, faq_answers)
        ],
    }
    asked = [(name, q, entries) for name, items in conditions.items() for q, entries in items if entries]
    generator = load_generator(_smollm2(home))
    prompts = [grounded_messages(cfg.grounding_prompt, q.text, entries) for _, q, entries in asked]
    start = time.perf_counter()
    generated: list[str] = []
    for i in range(0, len(prompts), batch_size):
        batch = generator.generate(prompts[i : i + batch_size], max_new_tokens=cfg.max_answer_tokens, temperature=0.0)
        generated += [g.text.strip() for g in batch]
        print(f"  generated {len(generated)}/{len(prompts)}", flush=True)
    seconds = time.perf_counter() - start
    lines = [
        "### Support answers: generated from the top FAQ entries vs the nearest answer verbatim",
        "",
        "| held-out questions | asked / scored (with key facts) | reference answer nearest / in top "
        f"{cfg.top_k} | answer | ROUGE-L F1 | key facts contained (share) | all key facts | mean words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, items in conditions.items():
        rows = [i for i, (c, _, _) in enumerate(asked) if c == name]
        kept = [(asked[i][1], asked[i][2]) for i in rows]
        references = [q.reference for q, _ in kept]
        facts = [key_facts(r) for r in references]
        with_facts = [i for i, f in enumerate(facts) if f]
        hits = "{:.3f} / {:.3f}".format(*(_hit_rate(kept, k) for k in (1, cfg.top_k)))
        counts = f"{len(items)} / {len(kept)} ({len(with_facts)})"
        systems = {
            "verbatim": [entries[0].answer for _, entries in kept],
            f"generated (top {cfg.top_k})": [generated[i] for i in rows],
        }
        for system, texts in systems.items():
            rouge = statistics.fmean(rouge_l(texts, references))
            contained = [facts_contained(texts[i], facts[i]) for i in with_facts]
            share = statistics.fmean(n / len(facts[i]) for n, i in zip(contained, with_facts, strict=True))
            whole = statistics.fmean(n == len(facts[i]) for n, i in zip(contained, with_facts, strict=True))
            words = statistics.fmean(len(t.split()) for t in texts)
            lines.append(
                f"| {name} | {counts} | {hits} | {system} | {rouge:.3f} | {share:.3f} | {whole:.3f} | {words:.1f} |"
            )
    lines += ["", f"Generation: {seconds:.0f} s for {len(prompts)} answers, batches of {batch_size}, greedy."]
    lines += ["", "First answers of each condition (question / reference / generated):", ""]
    for name in conditions:
        shown = [(q, generated[i]) for i, (c, q, _) in enumerate(asked) if c == name][:3]
        lines += [f"- {name}: {q.text!r} / {q.reference!r} / {text[:200]!r}" for q, text in shown]
    return lines


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    from kiln.evaluate.generation import rouge_l as score

    return score(predictions, references)


def _smollm2(home: Path) -> Path:
    """SmolLM2-135M-Instruct as a generation package under ``home`` (written once, reused)."""
    from generate_models import smollm2_package

    dest = home / "support-generate" / "smollm2-135m"
    if not (dest / "kiln.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        smollm2_package(dest, eval_docs=8)
    return dest


def _hit_rate(kept: list[tuple[Question, list[Any]]], k: int) -> float:
    """Share of questions whose reference answer is among the first ``k`` entries retrieved."""
    return statistics.fmean(any(e.answer == q.reference for e in entries[:k]) for q, entries in kept)
