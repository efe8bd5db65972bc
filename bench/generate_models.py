"""Text-generation models: what compression buys in speed and costs in perplexity, in one run.

    python bench/generate_models.py [--model auto|smollm2-135m|gpt-small] [--threads 2]
        [--new-tokens 128] [--repeats 3] [--eval-docs 32] [--work DIR [--build-only]]

``--work DIR --build-only`` builds and scores the packages in DIR without timing anything; a
later run with the same ``--work`` reuses them, so that on a shared machine only the timed part
needs the machine to itself.

Section 1, compression. One fp32 package (SmolLM2-135M-Instruct as Kiln converts it, when
``kiln.runtime.pretrained_lm`` is there; else an untrained GPT of size small built from config,
with a byte-level BPE trained on the wiki_summaries train split) is compressed by
``kiln.compress.run`` to int8 (quantize-torch) and to bf16 (cast). For each package it prints
the output tokens/s at batch 1 (greedy, ``--new-tokens`` new tokens through
``Generator.generate``; the three packages' runs interleaved, median of ``--repeats``), the
ratio to fp32, the held-out perplexity on ``--eval-docs`` validation documents of
wiki_summaries (measured by the compress steps on the same rows) and the size on disk.

Section 2, the decode loop. At batch 1 on the fp32 package, the time per output token of
``Generator.generate`` (greedy) against a bare loop on the same model and prompt: one prefill,
then ``model(input_ids[:, -1:], cache=...)`` and an argmax per token, for as many tokens as
Kiln generated; runs alternate, median of ``--repeats``.

Section 3, where a decode step's time goes: ``torch.profiler`` over 32 bare decode steps of the
fp32 and the int8 model, self CPU time of the matrix products (fp32 ``addmm``/``mm``, int8
``quantized::linear_dynamic``) against everything else (attention, norms, RoPE, cache updates,
the operators' dispatch); the profiler's own overhead inflates the many small operators.
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
    built = {"fp32": work / "fp32", "int8": work / "int8" / "01-quantize-torch", "bf16": work / "bf16" / "01-cast"}
    if not all((path / "kiln.json").exists() for path in built.values()):
        if use_smollm2:
            smollm2_package(built["fp32"], args.eval_docs)
        else:
            gpt_package(built["fp32"], args.eval_docs)
        cfg = CompressConfig.parse({"eval_samples": args.eval_docs, "cast": {"dtype": "bf16"}}, source="bench")
        for step, label in (("quantize-torch", "int8"), ("cast", "bf16")):
            kiln.compress.run(built["fp32"], output_dir=work / label, config=cfg, steps=[step])
        print(f"packages built and scored in {time.perf_counter() - start:.0f} s")
    packages = {label: path for label, path in built.items() if label in ("fp32", *args.timed)}
    perplexity = {}
    for label in ("int8", "bf16"):
        metrics = read_manifest(built[label])["metrics"]
        perplexity["fp32"], perplexity[label] = metrics["parent_perplexity"], metrics["perplexity"]
        scored = metrics["scored_tokens"]
    if args.build_only:
        return
    generators = {label: load_generator(path, device="cpu") for label, path in packages.items()}
    speeds: dict[str, list[float]] = {label: [] for label in packages}
    counts: dict[str, int] = {}
    for generator in generators.values():  # warm-up, not timed
        tokens_per_s(generator, 8)
    for _ in range(args.repeats):
        for label, generator in generators.items():
            speed, counts[label] = tokens_per_s(generator, args.new_tokens)
            speeds[label].append(speed)
    name = read_manifest(packages["fp32"])["name"]
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
    if "loop" in args.sections:
        decode_loop_section(args, generators["fp32"])
    if "profile" in args.sections and "int8" in generators:
        profile_section({"fp32": generators["fp32"].model, "int8": generators["int8"].model}, generators["fp32"])


def bare_decode_s(model: Any, prompt_ids: Any, new_tokens: int) -> float:
    """Seconds for ``new_tokens`` greedy tokens from a bare prefill + one-token-per-step cache loop."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=prompt_ids, use_cache=True)
        for _ in range(new_tokens - 1):
            token = out.logits[:, -1:].argmax(-1)
            out = model(input_ids=token, cache=out.cache, use_cache=True)
        out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - start


def decode_loop_section(args: argparse.Namespace, generator: Any) -> None:
    import torch

    prompt_ids = torch.tensor([generator.tokenizer.encode(PROMPT).ids])
    kiln_ms: list[float] = []
    bare_ms: list[float] = []
    tokens_per_s(generator, 8)
    bare_decode_s(generator.model, prompt_ids, 8)
    for _ in range(args.repeats):
        speed, count = tokens_per_s(generator, args.new_tokens)
        kiln_ms.append(1e3 / speed)
        bare_ms.append(bare_decode_s(generator.model, prompt_ids, count) / count * 1e3)
    kiln, bare = statistics.median(kiln_ms), statistics.median(bare_ms)
    print(f"\n## Decode loop: fp32, batch 1, {count} tokens, median of {args.repeats} (runs alternate)")
    print("| loop | ms per output token | runs |")
    print("|---|---|---|")
    print(f"| Generator.generate | {kiln:.1f} | {', '.join(f'{x:.1f}' for x in kiln_ms)} |")
    print(f"| bare model(...) loop | {bare:.1f} | {', '.join(f'{x:.1f}' for x in bare_ms)} |")
    print(f"Kiln / bare: {kiln / bare:.3f}; load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::_int_mm", "quantized::linear_dynamic")


def profile_section(models: dict[str, Any], generator: Any, steps: int = 32) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    prompt_ids = torch.tensor([generator.tokenizer.encode(PROMPT).ids])
    print(f"\n## Where a decode step goes: torch.profiler, {steps} bare decode steps at batch 1")
    print("| model | ms per step (profiled) | matrix products | everything else | top other operators |")
    print("|---|---|---|---|---|")
    for label, model in models.items():
        bare_decode_s(model, prompt_ids, 4)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = bare_decode_s(model, prompt_ids, steps)
        events = prof.key_averages()
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
        total = sum(e.self_cpu_time_total for e in events)
        others = sorted((e for e in events if e.key not in MATMUL_OPS), key=lambda e: -e.self_cpu_time_total)[:4]
        top = ", ".join(f"{e.key} {e.self_cpu_time_total / total:.0%}" for e in others)
        print(f"| {label} | {wall / steps * 1e3:.1f} | {matmul / total:.0%} | {1 - matmul / total:.0%} | {top} |")


def main() -> None:
    parser = argparse.ArgumentParser(description="compressed text-generation packages against fp32")
    parser.add_argument("--model", choices=["auto", "smollm2-135m", "gpt-small"], default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-docs", type=int, default=32, help="validation documents scored for perplexity")
    parser.add_argument("--work", type=Path, default=None, help="folder of the packages, reused when they are there")
    parser.add_argument("--build-only", action="store_true", help="build and score the packages, time nothing")
    both = ["int8", "bf16"]
    parser.add_argument("--timed", nargs="+", choices=both, default=both, help="packages timed beside fp32")
    sections = ["loop", "profile"]
    parser.add_argument("--sections", nargs="+", choices=sections, default=sections, help="sections 2 and 3 to run")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    compression_section(args, args.work or Path(tempfile.mkdtemp(prefix="kiln-bench-gen-")))


if __name__ == "__main__":
    main()
