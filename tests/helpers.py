"""Small recipes and subprocess helpers shared by the training and CLI tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kiln.registry import Role

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_text_recipe(run_dir: Path, **train: Any) -> dict[str, Any]:
    """A fast text recipe: a tiny BERT trained from scratch on 300 Rotten Tomatoes snippets."""
    return {
        "name": "tiny-text",
        "seed": 7,
        "data": {"dataset": "rotten_tomatoes", "max_examples": 300},
        "model": {"kind": "bert", "size": "tiny", "vocab_size": 400, "max_length": 32},
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "lr": 1e-3,
            "num_threads": 1,
            "progress": False,
            "output_dir": str(run_dir),
            **train,
        },
    }


def tiny_image_recipe(run_dir: Path, **train: Any) -> dict[str, Any]:
    """A fast image recipe: a small CNN on scikit-learn's 8x8 digits."""
    return {
        "name": "tiny-digits",
        "seed": 3,
        "data": {"dataset": "digits"},
        "model": {"kind": "cnn", "cnn": {"channels": [8, 16], "hidden_size": 32, "dropout": 0.1}},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "lr": 3e-3,
            "num_threads": 1,
            "progress": False,
            "output_dir": str(run_dir),
            **train,
        },
    }


def train_losses(run_dir: Path) -> list[float]:
    """The training losses a run logged to ``metrics.jsonl``, in step order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def log_lines_up_to(run_dir: Path, step: int) -> list[str]:
    """The lines of a run's ``metrics.jsonl`` logged at ``step`` or before, as written."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["step"] <= step]


def last_checkpoint_step(run_dir: Path) -> int:
    """The step of the newest ``checkpoints/step-*`` folder of a run."""
    return max(int(p.name.removeprefix("step-")) for p in (run_dir / "checkpoints").glob("step-*"))


def package_validation_scores(package: Path, recipe: Any) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a package on its recipe's validation split, via kiln.runtime."""
    import numpy as np

    import kiln.data
    import kiln.runtime

    validation = kiln.data.run(recipe).validation
    probs = kiln.runtime.load(package).predict_proba(validation.inputs)
    labels = np.asarray(validation.labels)
    return float((probs.argmax(1) == labels).mean()), float(-np.log(probs[np.arange(len(labels)), labels]).mean())


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def api_token(user: str, role: Role) -> str:
    """A new API token for a new user with ``role`` in the registry at KILN_HOME."""
    from kiln.registry import Registry

    with Registry() as registry:
        registry.store.create_user(user, role)
        return registry.store.create_token(user)[1]


def kiln_argv(*args: str) -> list[str]:
    """The command line of the real ``kiln`` command, run by this Python."""
    return [sys.executable, "-m", "kiln.cli.main", *args]


def kiln_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``kiln`` command in a subprocess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        kiln_argv(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


GENERATION_TEXTS = [
    "the cat sat on the mat and looked at the door",
    "a dog ran in the park; the sun was warm",
    "café au lait, crème brûlée and a naïve résumé",
    "日本語のテキストと絵文字 🙂 もあります",
    "question: what is the capital of france? answer: paris",
] * 4


def tiny_byte_bpe(dest: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer file trained on a few sentences (multi-byte characters included)."""
    from kiln.data.tokenizer import GPT_SPECIAL_TOKENS, train_byte_bpe

    return train_byte_bpe(GENERATION_TEXTS, vocab_size, dest, special_tokens=list(GPT_SPECIAL_TOKENS))


def tiny_causal_lm(vocab_size: int, *, family: str = "llama", context_length: int = 64, seed: int = 0) -> Any:
    """A random 2-layer Llama or GPT-2 with peaky logits (wide initialisation), so greedy choices are clear."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    if family == "llama":
        config: Any = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=context_length,
            initializer_range=0.5,
            tie_word_embeddings=True,
        )
    else:
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=context_length,
            n_embd=32,
            n_layer=2,
            n_head=4,
            initializer_range=0.5,
            bos_token_id=0,
            eos_token_id=0,
        )
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_generation_package(
    dest: Path,
    *,
    family: str = "llama",
    context_length: int = 64,
    chat_template: str | None = "default",
    eos_token: str = "<|endoftext|>",
    **generation: Any,
) -> Path:
    """A text-generation package of a tiny random causal LM, written by Kiln's own package writer
    (``chat_template="default"``: the template of the GPTs Kiln trains)."""
    from tokenizers import Tokenizer

    from kiln.data.chat import DEFAULT_CHAT_TEMPLATE
    from kiln.runtime.generation import write_generation_package

    tokenizer_file = tiny_byte_bpe(dest.parent / f"{dest.name}-tokenizer.json")
    vocab_size = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    write_generation_package(
        dest,
        model=tiny_causal_lm(vocab_size, family=family, context_length=context_length),
        tokenizer_file=tokenizer_file,
        chat_template=DEFAULT_CHAT_TEMPLATE if chat_template == "default" else chat_template,
        manifest={
            "name": dest.name,
            "preprocessing": {
                "context_length": context_length,
                "bos_token": None,
                "eos_token": eos_token,
                "special_tokens": {},
            },
            "generation": {"max_new_tokens": 16, **generation},
            "lineage": {"parent": None, "transformation": "test-fixture", "settings": {}},
            "metrics": {},
            "data_fingerprint": "sha256:" + "0" * 64,
            "recipe": {},
        },
    )
    return dest
