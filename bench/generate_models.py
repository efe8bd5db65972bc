"""Text-generation models: what compression buys in speed and costs in perplexity, in one run.

    python bench/generate_models.py [--model auto|smollm2-135m|gpt-small] [--threads 2]
        [--new-tokens 128] [--repeats 3] [--eval-docs 32]

Section 1, compression. One fp32 package (SmolLM2-135M-Instruct as Kiln converts it, when
``kiln.runtime.pretrained_lm`` is there; else an untrained GPT of size small built from config,
with a byte-level BPE trained on the wiki_summaries train split) is compressed by
``kiln.compress.run`` to int8 (quantize-torch) and to bf16 (cast). For each package it prints
the output tokens/s at batch 1 (greedy, ``--new-tokens`` new tokens through
``Generator.generate``; the three packages' runs interleaved, median of ``--repeats``), the
ratio to fp32, the held-out perplexity on ``--eval-docs`` validation documents of
wiki_summaries (measured by the compress steps on the same rows) and the size on disk.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "The history of the city begins"
GPT_VOCAB = 8000
GPT_CONTEXT = 512


def recipe(model: dict[str, Any], eval_docs: int) -> dict[str, Any]:
    """The recipe recorded in the package: its data is the text the compress steps score."""
    return {
        "name": "bench-generation",
        "task": "text-generation",
        "data": {"dataset": "wiki_summaries"},
        "model": model,
        "compress": {"eval_samples": eval_docs},
    }


def smollm2_package(dest: Path, eval_docs: int) -> Path:
    """SmolLM2-135M-Instruct (fp32, dequantized from its GGUF by Kiln) as a generation package."""
    import json

    from transformers import AutoModelForCausalLM

    from kiln.runtime.generation import write_generation_package
    from kiln.runtime.pretrained_lm import SPECIAL_TOKENS_FILE, pretrained_lm_folder

    folder = pretrained_lm_folder("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32").eval()
    special = json.loads((folder / SPECIAL_TOKENS_FILE).read_text())
    write_generation_package(
        dest,
        model=model,
        tokenizer_file=folder / "tokenizer.json",
        chat_template=(folder / "chat_template.jinja").read_text(),
        manifest=_manifest(
            "smollm2-135m",
            context_length=int(model.config.max_position_embeddings),
            eos_token=special["eos_token"],
            bos_token=special["bos_token"],
            recipe=recipe({"kind": "pretrained", "pretrained": "smollm2-135m"}, eval_docs),
        ),
    )
    return dest


def gpt_package(dest: Path, eval_docs: int) -> Path:
    """An untrained GPT of size small (speed does not depend on the weights' values)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    import kiln.data
    from kiln.config.schema import Recipe
    from kiln.data.tokenizer import EOS_TOKEN, GPT_SPECIAL_TOKENS, train_byte_bpe
    from kiln.runtime.architectures import gpt_config
    from kiln.runtime.generation import write_generation_package

    raw = recipe({"kind": "gpt", "size": "small", "vocab_size": GPT_VOCAB, "max_length": GPT_CONTEXT}, eval_docs)
    texts = kiln.data.load_language_data(Recipe.model_validate(raw)).train
    tokenizer_file = train_byte_bpe(
        [str(t) for t in texts], GPT_VOCAB, dest.parent / "tokenizer.json", special_tokens=list(GPT_SPECIAL_TOKENS)
    )
    eos_id = Tokenizer.from_file(str(tokenizer_file)).token_to_id(EOS_TOKEN)
    torch.manual_seed(0)
    config = gpt_config(
        size="small",
        vocab_size=GPT_VOCAB,
        context_length=GPT_CONTEXT,
        dropout=None,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    write_generation_package(
        dest,
        model=AutoModelForCausalLM.from_config(config).eval(),
        tokenizer_file=tokenizer_file,
        chat_template=None,
        manifest=_manifest("gpt-small", context_length=GPT_CONTEXT, eos_token=EOS_TOKEN, bos_token=None, recipe=raw),
    )
    return dest


def _manifest(
    name: str, *, context_length: int, eos_token: str, bos_token: str | None, recipe: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "preprocessing": {"context_length": context_length, "eos_token": eos_token, "bos_token": bos_token},
        "generation": {"max_new_tokens": 128},
        "lineage": {"parent": None, "transformation": "bench", "settings": {}},
        "metrics": {},
        "recipe": recipe,
    }


def tokens_per_s(generator: Any, new_tokens: int) -> tuple[float, int]:
    """Output tokens per second of one greedy answer at batch 1, and the tokens it generated."""
    start = time.perf_counter()
    [answer] = generator.generate([PROMPT], max_new_tokens=new_tokens, temperature=0.0)
    return answer.new_tokens / (time.perf_counter() - start), answer.new_tokens


def compression_section(args: argparse.Namespace, work: Path) -> None:
    import kiln.compress
    from kiln.config.schema import CompressConfig
    from kiln.runtime.generation import load_generator
    from kiln.runtime.package import read_manifest

    use_smollm2 = args.model == "smollm2-135m" or (
        args.model == "auto" and importlib.util.find_spec("kiln.runtime.pretrained_lm") is not None
    )
    start = time.perf_counter()
    fp32 = smollm2_package(work / "fp32", args.eval_docs) if use_smollm2 else gpt_package(work / "fp32", args.eval_docs)
    cfg = CompressConfig.parse({"eval_samples": args.eval_docs, "cast": {"dtype": "bf16"}}, source="bench")
    packages = {"fp32": fp32}
    perplexity = {}
    for step, label in (("quantize-torch", "int8"), ("cast", "bf16")):
        result = kiln.compress.run(fp32, output_dir=work / label, config=cfg, steps=[step])
        packages[label] = result.packages[0]
        metrics = result.manifests[0]["metrics"]
        perplexity["fp32"], perplexity[label] = metrics["parent_perplexity"], metrics["perplexity"]
        scored = metrics["scored_tokens"]
    print(f"packages built and scored in {time.perf_counter() - start:.0f} s")
    generators = {label: load_generator(path, device="cpu") for label, path in packages.items()}
    speeds: dict[str, list[float]] = {label: [] for label in packages}
    counts: dict[str, int] = {}
    for generator in generators.values():  # warm-up, not timed
        tokens_per_s(generator, 8)
    for _ in range(args.repeats):
        for label, generator in generators.items():
            speed, counts[label] = tokens_per_s(generator, args.new_tokens)
            speeds[label].append(speed)
    name = read_manifest(fp32)["name"]
    print(
        f"\n## Compression: {name}, batch 1, {args.new_tokens} new tokens, {args.threads} threads, "
        f"median of {args.repeats}; perplexity on {args.eval_docs} wiki_summaries validation documents "
        f"({scored} tokens)"
    )
    print("| package | output tokens/s | vs fp32 | tokens generated | perplexity | vs fp32 | size MB |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(speeds["fp32"])
    for label, path in packages.items():
        speed = statistics.median(speeds[label])
        size = sum((path / f).stat().st_size for f in read_manifest(path)["files"]) / 1e6
        print(
            f"| {label} | {speed:.1f} | {speed / base:.2f}x | {counts[label]} | {perplexity[label]:.3f} | "
            f"{perplexity[label] / perplexity['fp32'] - 1:+.2%} | {size:.1f} |"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description="compressed text-generation packages against fp32")
    parser.add_argument("--model", choices=["auto", "smollm2-135m", "gpt-small"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-docs", type=int, default=32, help="validation documents scored for perplexity")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    compression_section(args, Path(tempfile.mkdtemp(prefix="kiln-bench-gen-")))


if __name__ == "__main__":
    main()
