"""Nearest-neighbour answer retrieval: a pretrained sentence encoder and an FAQ index.

Sentences are embedded by mean pooling the encoder's last hidden states over real tokens and
L2-normalising (Reimers & Gurevych 2019, Sentence-BERT); the nearest FAQ question by cosine
similarity gives the answer. The index (questions, answers, embeddings) travels in the package;
the encoder is the installed pretrained one the manifest names, so a package stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import PackageError
from kiln.runtime.preprocessing import TextPreprocessor

FAQ_FILE = "faq.csv"
FAQ_EMBEDDINGS = "faq_embeddings.safetensors"


class SentenceEncoder:
    """A pretrained BERT-type encoder with mean pooling; texts in, unit vectors out."""

    def __init__(self, folder: Path, *, max_length: int = 128, batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModel

        # Tokenized and padded as packages are (the tokenizer's own pad id, to the longest text).
        self.preprocessor = TextPreprocessor(folder / "tokenizer.json", max_length)
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.batch_size = batch_size
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, shape (len(texts), hidden)."""
        from kiln.runtime.architectures import masked_mean

        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.preprocessor(list(texts[start : start + self.batch_size]))
            ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
            with torch.inference_mode():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = masked_mean(hidden, mask)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class Answer:
    """The nearest FAQ entry to a message."""

    question: str  # the FAQ question that matched
    answer: str  # its answer
    score: float  # cosine similarity of message and question
    row: int = -1  # the entry's row in the package's faq.csv, from 0 (its id in an answer's sources)


class FaqIndex:
    """FAQ questions, answers and question embeddings, searched by cosine similarity."""

    def __init__(self, *, questions: list[str], answers: list[str], embeddings: np.ndarray, encoder: Any) -> None:
        if not (len(questions) == len(answers) == len(embeddings)):
            raise PackageError("the FAQ index has different numbers of questions, answers and embeddings")
        self.questions = questions
        self.answers = answers
        self.embeddings = embeddings
        self.encoder = encoder

    def search(self, texts: Sequence[str]) -> list[Answer]:
        """The nearest FAQ entry of each text."""
        similarity = self.encoder.encode(texts) @ self.embeddings.T
        best = similarity.argmax(axis=1)
        return [
            Answer(self.questions[j], self.answers[j], float(similarity[i, j]), int(j)) for i, j in enumerate(best)
        ]

    def search_top(self, text: str, k: int) -> list[Answer]:
        """The ``k`` nearest FAQ entries to ``text``, nearest first (ties in row order)."""
        similarity = self.encoder.encode([text])[0] @ self.embeddings.T
        order = np.argsort(-similarity, kind="stable")[:k]
        return [Answer(self.questions[j], self.answers[j], float(similarity[j]), int(j)) for j in order]


def write_faq_index(folder: Path, questions: list[str], answers: list[str], encoder: SentenceEncoder) -> None:
    """Write ``faq.csv`` and the question embeddings into a (staging) package folder."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    pd.DataFrame({"question": questions, "answer": answers}).to_csv(folder / FAQ_FILE, index=False)
    save_file({"questions": torch.from_numpy(encoder.encode(questions))}, str(folder / FAQ_EMBEDDINGS))


def load_faq_index(folder: Path, encoder_name: str) -> FaqIndex:
    """Load a package's FAQ index with the installed encoder it names.

    Raises:
        PackageError: missing FAQ files, or an encoder that is not installed.
    """
    import pandas as pd
    from safetensors.numpy import load_file

    from kiln.data.tokenizer import resolve_pretrained
    from kiln.errors import KilnError

    try:
        encoder = SentenceEncoder(resolve_pretrained(encoder_name))
        frame = pd.read_csv(folder / FAQ_FILE, dtype=str, keep_default_na=False)
        embeddings = load_file(str(folder / FAQ_EMBEDDINGS))["questions"]
    except (OSError, KeyError, KilnError) as exc:
        raise PackageError(f"{folder}: cannot load the FAQ index: {exc}") from None
    return FaqIndex(
        questions=frame["question"].tolist(), answers=frame["answer"].tolist(), embeddings=embeddings, encoder=encoder
    )
