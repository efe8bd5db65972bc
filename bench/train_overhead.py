"""Kiln's training loop against a minimal hand-written PyTorch loop, in one run.

Same model (a BERT-mini built from config), same data (Rotten Tomatoes, tokenized by the same
tokenizer, padded per batch), same global batch, optimizer, schedule, clipping and thread
count; both end with one validation pass and a saved model. Runs alternate (Kiln, hand, Kiln,
hand, ...) so that drift on a shared machine hits both; the ratio of medians is printed.

    python bench/train_overhead.py [--steps 120] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import kiln.data
import kiln.train
from kiln.config import parse_recipe
from kiln.runtime.architectures import bert_config, build_text_classifier
from kiln.runtime.preprocessing import TextPreprocessor
from kiln.train.optim import build_optimizer, build_scheduler


def recipe(run_dir: Path, tokenizer: Path | None, steps: int, threads: int) -> dict:
    model = {"kind": "bert", "size": "mini", "vocab_size": 8000, "max_length": 64}
    if tokenizer is not None:
        model["tokenizer_file"] = str(tokenizer)
    return {
        "name": "overhead",
        "seed": 0,
        "data": {"dataset": "rotten_tomatoes", "max_examples": 6000},
        "model": model,
        "train": {
            "epochs": 100,
            "max_steps": steps,
            "batch_size": 32,
            "lr": 1e-4,
            "num_threads": threads,
            "checkpoint_every_steps": 10_000,
            "output_dir": str(run_dir),
            "progress": True,
        },
    }


def run_kiln(raw: dict) -> float:
    cfg = parse_recipe(raw)
    started = time.perf_counter()
    kiln.train.run(cfg)
    return time.perf_counter() - started


def run_hand(raw: dict, tokenizer: Path, out: Path) -> float:
    """The loop a user would write by hand; timed over the same phases as Kiln's run()."""
    from safetensors.torch import save_file

    cfg = parse_recipe(raw)
    started = time.perf_counter()
    torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.seed)
    data = kiln.data.run(cfg)
    prep = TextPreprocessor(tokenizer, cfg.model.max_length)
    train_ids = prep.encode(list(data.train.inputs))
    val_ids = prep.encode(list(data.validation.inputs))
    vocab = prep.tokenizer.get_vocab_size()
    model = build_text_classifier(
        bert_config(size="mini", vocab_size=vocab, num_labels=2, max_length=cfg.model.max_length, dropout=None)
    )
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, cfg.train.max_steps)
    labels = torch.from_numpy(data.train.labels)
    bs, step, epoch = cfg.train.batch_size, 0, 0
    model.train()
    while step < cfg.train.max_steps:
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_ids))
        for start in range(0, len(order) - bs + 1, bs):
            index = order[start : start + bs]
            batch = {k: torch.from_numpy(v) for k, v in prep.collate([train_ids[i] for i in index]).items()}
            loss = F.cross_entropy(model(**batch).logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step >= cfg.train.max_steps:
                break
        epoch += 1
    model.eval()
    with torch.no_grad():
        for start in range(0, len(val_ids), 64):
            batch = {k: torch.from_numpy(v) for k, v in prep.collate(val_ids[start : start + 64]).items()}
            model(**batch)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Train the tokenizer once so that both loops see identical token ids.
        kiln.train.run(parse_recipe(recipe(root / "tok", None, 1, args.threads) | {}))
        tokenizer = root / "tok" / "tokenizer.json"
        kiln_times, hand_times = [], []
        for i in range(args.repeats):
            kiln_times.append(run_kiln(recipe(root / f"kiln{i}", tokenizer, args.steps, args.threads)))
            out = root / f"hand{i}"
            out.mkdir()
            hand_times.append(run_hand(recipe(out, tokenizer, args.steps, args.threads), tokenizer, out))
            print(f"round {i}: kiln {kiln_times[-1]:.2f} s, hand {hand_times[-1]:.2f} s", flush=True)
    kiln_rate = args.steps / statistics.median(kiln_times)
    hand_rate = args.steps / statistics.median(hand_times)
    print(f"steps: {args.steps}, threads: {args.threads}, batch: 32, model: bert-mini")
    print(f"kiln steps/s (median of {args.repeats}): {kiln_rate:.3f}")
    print(f"hand steps/s (median of {args.repeats}): {hand_rate:.3f}")
    print(f"ratio kiln/hand: {kiln_rate / hand_rate:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
