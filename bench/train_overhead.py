"""Kiln's training loop against a minimal hand-written PyTorch loop, in one run.

Same model (a BERT-mini built from config), same data (Rotten Tomatoes, tokenized by the same
tokenizer, padded per batch), same global batch, optimizer, schedule, clipping and thread
count. Runs alternate (Kiln, hand, Kiln, hand, ...) so that drift on a shared machine hits both.

Two ratios are printed, each a ratio of medians:
- loop steps/s: from the first step to the last, as Kiln's metrics.jsonl records it
  (``elapsed_s``: steps plus Kiln's logging, progress bar and periodic checkpoints) against the
  hand loop's same span. This is the training loop's overhead, the figure the target is for.
- whole run: everything from recipe to files on disk; Kiln also writes checkpoints, the
  reference profile for drift monitoring and a hashed package, which the hand loop does not.

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


def run_kiln(raw: dict) -> tuple[float, float]:
    """(whole-run seconds, loop seconds) of one Kiln run."""
    import json

    cfg = parse_recipe(raw)
    started = time.perf_counter()
    result = kiln.train.run(cfg)
    whole = time.perf_counter() - started
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    loop = [r for r in records if r["type"] == "train"][-1]["elapsed_s"]
    return whole, loop


def run_hand(raw: dict, tokenizer: Path, out: Path) -> tuple[float, float]:
    """The loop a user would write by hand: (whole-run seconds, loop seconds)."""
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
    loop_started = time.perf_counter()
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
    loop_s = time.perf_counter() - loop_started
    model.eval()
    with torch.no_grad():
        for start in range(0, len(val_ids), 64):
            batch = {k: torch.from_numpy(v) for k, v in prep.collate(val_ids[start : start + 64]).items()}
            model(**batch)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    return time.perf_counter() - started, loop_s


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
        kiln_runs, hand_runs = [], []
        for i in range(args.repeats):
            kiln_runs.append(run_kiln(recipe(root / f"kiln{i}", tokenizer, args.steps, args.threads)))
            out = root / f"hand{i}"
            out.mkdir()
            hand_runs.append(run_hand(recipe(out, tokenizer, args.steps, args.threads), tokenizer, out))
            print(
                f"round {i}: loop kiln {kiln_runs[-1][1]:.2f} s, hand {hand_runs[-1][1]:.2f} s; "
                f"whole run kiln {kiln_runs[-1][0]:.2f} s, hand {hand_runs[-1][0]:.2f} s",
                flush=True,
            )
    print(f"steps: {args.steps}, threads: {args.threads}, batch: 32, model: bert-mini, rounds: {args.repeats}")
    for label, index in (("loop", 1), ("whole run", 0)):
        kiln_rate = args.steps / statistics.median(r[index] for r in kiln_runs)
        hand_rate = args.steps / statistics.median(r[index] for r in hand_runs)
        target = " (target >= 0.95)" if index == 1 else ""
        ratio = kiln_rate / hand_rate
        print(f"{label}: kiln {kiln_rate:.3f} steps/s, hand {hand_rate:.3f} steps/s, ratio {ratio:.3f}{target}")


if __name__ == "__main__":
    main()
