"""Training language models: Kiln's loop against a hand-written one, and supervised fine-tuning
of SmolLM2 (quality against the base model, memory of LoRA against full fine-tuning).

Sections of the generation benchmarks (run alone, or from ``bench/generate_models.py``):

    python bench/lm_training.py throughput [--steps 12] [--repeats 2] [--threads 2] [--precision fp32] [--size small]
    python bench/lm_training.py sft [--prompts 32] [--epochs 1]

throughput: a GPT of size small built from config, pretrained on the packed Wikipedia summaries
(sequences of 256 tokens, global batch 16, fp32 or bf16 autocast, AdamW, warmup + cosine, clipping) by
``kiln train`` and by a minimal hand-written loop on the same model, tokenizer, sequences, batch
order and thread count. Runs alternate (Kiln, hand, Kiln, hand...) so that drift on a shared
machine hits both; each run's tokens/s is the median over its steps after the first two.

sft: the chat recipe's fine-tuning (LoRA on the chatterbot-corpus pairs) against the base
SmolLM2 package, both scored by ``kiln.evaluate`` on the same held-out prompts (ROUGE-L F1,
exact match, perplexity of the responses); then the peak RSS of a few steps of LoRA and of full
fine-tuning, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def pretrain_recipe(run_dir: Path, *, steps: int, threads: int, precision: str, size: str) -> dict[str, Any]:
    return {
        "name": "lm-throughput",
        "seed": 0,
        "task": "text-generation",
        "data": {"dataset": "wiki_summaries", "max_examples": 3000},
        "model": {"kind": "gpt", "size": size, "vocab_size": 8000, "max_length": 256, "dropout": 0.0},
        "lm": {"sequence_length": 256},
        "train": {
            "epochs": 1,
            "max_steps": steps,
            "batch_size": 16,
            "lr": 6e-4,
            "schedule": "cosine",
            "precision": precision,
            "num_threads": threads,
            "log_every_steps": 1,
            "checkpoint_every_steps": 10_000,
            "output_dir": str(run_dir),
            "progress": False,
        },
    }


def run_kiln(raw: dict[str, Any]) -> float:
    """Median tokens/s of Kiln's logged steps after the first two."""
    import kiln.train
    from kiln.config import parse_recipe

    result = kiln.train.run(parse_recipe(raw))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if r["type"] == "train"][2:]
    return statistics.median(speeds)


def run_hand(raw: dict[str, Any], tokenizer_file: Path) -> float:
    """The same model, data, order and optimiser in a plain PyTorch loop; median tokens/s after two steps."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    import kiln.data
    from kiln.config import parse_recipe
    from kiln.data.order import epoch_order
    from kiln.data.tokenizer import pack_documents
    from kiln.runtime.architectures import gpt_config
    from kiln.train.optim import build_optimizer, build_scheduler

    recipe = parse_recipe(raw)
    torch.manual_seed(recipe.train_seed)
    data = kiln.data.load_language_data(recipe)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    end = tokenizer.token_to_id("<|endoftext|>")
    encoded = [e.ids for e in tokenizer.encode_batch([str(d) for d in data.train], add_special_tokens=False)]
    sequences = torch.from_numpy(pack_documents(encoded, recipe.lm.sequence_length, end))
    config = gpt_config(
        size=recipe.model.size,
        vocab_size=tokenizer.get_vocab_size(),
        context_length=recipe.model.max_length,
        dropout=0.0,
        bos_token_id=end,
        eos_token_id=end,
    )
    model = AutoModelForCausalLM.from_config(config)
    steps = recipe.train.max_steps or 1
    optimizer = build_optimizer(model, recipe.train)
    scheduler = build_scheduler(optimizer, recipe.train, steps)
    size = recipe.train.batch_size
    order = epoch_order(len(sequences), recipe.train_seed, 0, lengths=None, batch_size=size)
    model.train()
    speeds = []
    for step in range(steps):
        batch = sequences[order[step * size : (step + 1) * size]]
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.train.precision == "bf16"):
            logits = model(input_ids=batch).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        float(loss.item())
        speeds.append(batch[:, 1:].numel() / (time.perf_counter() - started))
    return statistics.median(speeds[2:])


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    kiln_speeds, hand_speeds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            raw = pretrain_recipe(
                Path(tmp) / f"kiln-{repeat}",
                steps=args.steps,
                threads=args.threads,
                precision=args.precision,
                size=args.size,
            )
            kiln_speeds.append(run_kiln(raw))
            hand_speeds.append(run_hand(raw, Path(tmp) / f"kiln-{repeat}" / "tokenizer.json"))
            print(f"repeat {repeat}: kiln {kiln_speeds[-1]:.0f} tok/s, hand {hand_speeds[-1]:.0f} tok/s", flush=True)
    kiln_tps, hand_tps = statistics.median(kiln_speeds), statistics.median(hand_speeds)
    row = {"kiln_tokens_per_s": kiln_tps, "hand_tokens_per_s": hand_tps, "ratio": kiln_tps / hand_tps}
    print(f"training throughput: kiln {kiln_tps:.0f} tok/s, hand-written {hand_tps:.0f} tok/s", end=", ")
    print(f"ratio {row['ratio']:.3f}")
    return row


def sft_recipe(run_dir: Path, *, epochs: int, prompts: int, lora: bool, max_steps: int | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "chat-bench",
        "seed": 42,
        "task": "text-generation",
        "data": {"dataset": "chatterbot_qa"},
        "model": {"kind": "pretrained", "pretrained": "smollm2-135m"},
        "lm": {
            "sequence_length": 128,
            "system_prompt": "You are a friendly assistant. Answer in one or two short sentences.",
            "generation": {"max_new_tokens": 64, "stop": ["\n\n"]},
            "eval_prompts": prompts,
        },
        "train": {
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": 16,
            "lr": 2e-4 if lora else 2e-5,
            "group_by_length": True,
            "checkpoint_every_steps": 10_000,
            "output_dir": str(run_dir),
            "progress": False,
        },
    }
    if lora:
        raw["lm"]["lora"] = {
            "rank": 8,
            "alpha": 16,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        }
    return raw


def base_package(raw: dict[str, Any], dest: Path) -> Path:
    """SmolLM2 as it is, packaged with the fine-tuning recipe so that evaluation reads the same split."""
    from transformers import AutoModelForCausalLM

    from kiln.config import parse_recipe
    from kiln.runtime.generation import write_generation_package
    from kiln.runtime.pretrained_lm import pretrained_lm_folder

    folder = pretrained_lm_folder("smollm2-135m")
    special = json.loads((folder / "special_tokens.json").read_text())
    recipe = parse_recipe(raw)
    write_generation_package(
        dest,
        model=AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32"),
        tokenizer_file=folder / "tokenizer.json",
        chat_template=(folder / "chat_template.jinja").read_text(),
        manifest={
            "name": "smollm2-base",
            "preprocessing": {
                "context_length": 8192,
                "bos_token": special.get("bos_token"),
                "eos_token": special["eos_token"],
                "special_tokens": {k: v for k, v in special.items() if isinstance(v, str)},
                "system_prompt": recipe.lm.system_prompt,
            },
            "generation": recipe.lm.generation.model_dump(mode="json"),
            "lineage": {"parent": "smollm2-135m", "transformation": "none"},
            "recipe": recipe.model_dump(mode="json"),
        },
    )
    return dest


def peak_rss_mb(recipe_file: Path) -> float:
    """Peak RSS of ``kiln train RECIPE`` in a process of its own."""
    code = (
        "import resource, sys\n"
        "from kiln.cli.main import main\n"
        "sys.argv = ['kiln', 'train', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(recipe_file)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1].split()[1])


def sft(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    import kiln.evaluate
    import kiln.train
    from kiln.config import parse_recipe

    with tempfile.TemporaryDirectory() as tmp:
        raw = sft_recipe(Path(tmp) / "lora", epochs=args.epochs, prompts=args.prompts, lora=True, max_steps=None)
        started = time.perf_counter()
        tuned = kiln.train.run(parse_recipe(raw))
        train_s = time.perf_counter() - started
        assert tuned.package_dir is not None
        base = base_package(raw, Path(tmp) / "base")
        scores = {}
        for label, package in (("base", base), ("fine-tuned", tuned.package_dir)):
            report = kiln.evaluate.run(kiln.evaluate.EvaluationConfig(package=package, output_dir=Path(tmp) / label))
            scores[label] = {k: report.report[k] for k in ("rouge_l", "exact_match", "perplexity")}
            print(f"{label}: {scores[label]}", flush=True)
        memory = {}
        for label, is_lora in (("lora", True), ("full", False)):
            steps = sft_recipe(Path(tmp) / f"rss-{label}", epochs=1, prompts=1, lora=is_lora, max_steps=3)
            recipe_file = Path(tmp) / f"rss-{label}.yaml"
            recipe_file.write_text(yaml.safe_dump(steps))
            memory[label] = peak_rss_mb(recipe_file)
            print(f"peak RSS {label}: {memory[label]:.0f} MB", flush=True)
    row = {"train_s": train_s, "scores": scores, "peak_rss_mb": memory}
    print(json.dumps(row, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--steps", type=int, default=12)
    t.add_argument("--repeats", type=int, default=2)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    t.add_argument("--size", choices=["tiny", "mini", "small", "base"], default="small")
    s = sub.add_parser("sft")
    s.add_argument("--prompts", type=int, default=32)
    s.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if args.section == "throughput":
        throughput(args)
    else:
        sft(args)


if __name__ == "__main__":
    main()
