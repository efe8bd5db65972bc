"""Small generated text for language-model tests: a corpus of plain sentences, question/answer
pairs, and recipes that train a tiny GPT on them in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the farmer"]
VERBS = ["sees", "likes", "finds", "paints", "follows", "feeds", "visits"]
OBJECTS = ["the red ball", "a green tree", "the river", "an open door", "the quiet town", "a warm loaf"]
CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Ireland": "Dublin",
}


def write_corpus(path: Path, *, documents: int = 400, seed: int = 0) -> Path:
    """One document per line, each a few sentences from a tiny grammar (so a tiny model learns it)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        sentences = [
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(rng.randint(2, 5))
        ]
        lines.append(" ".join(s[0].upper() + s[1:] for s in sentences))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_qa_pairs(path: Path, *, copies: int = 20) -> Path:
    """JSONL of prompt/response pairs about capitals, phrased a few ways."""
    phrasings = ["What is the capital of {c}?", "Name the capital of {c}.", "Which city is the capital of {c}?"]
    rows = []
    for k in range(copies):
        for country, city in CAPITALS.items():
            prompt = phrasings[k % len(phrasings)].format(c=country)
            rows.append({"prompt": f"{prompt} ({k})", "response": f"The capital of {country} is {city}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_gpt_recipe(run_dir: Path, data_file: Path, **train: Any) -> dict[str, Any]:
    """A text-generation recipe: a tiny GPT with a 300-token byte-level BPE, trained for a few steps."""
    return {
        "name": "tiny-gpt",
        "seed": 5,
        "task": "text-generation",
        "data": {"train_file": str(data_file)},
        "model": {"kind": "gpt", "size": "tiny", "vocab_size": 300, "max_length": 64, "dropout": 0.0},
        "lm": {"sequence_length": 32, "generation": {"max_new_tokens": 16}, "eval_prompts": 4},
        "train": {
            "epochs": 1,
            "max_steps": 6,
            "batch_size": 8,
            "lr": 3e-3,
            "num_threads": 1,
            "progress": False,
            "checkpoint_every_steps": 2,
            "output_dir": str(run_dir),
            **train,
        },
    }
