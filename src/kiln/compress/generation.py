"""Compression of text-generation packages: int8 Linear weights, a fp16/bf16 cast, distillation.

Each step loads its parent through the runtime, makes the smaller model in memory, scores it and
its parent on the same validation text with the runtime's ``Generator.score`` (the numbers
``kiln eval`` reports) and writes it with the runtime's ``write_generation_package`` (atomic), with
lineage to its parent and ``metrics.perplexity_change``: the child's perplexity over the
parent's, minus one (0.03 means 3% higher). The steps that work on classifiers' graphs, heads,
vocabularies or sparsity patterns (onnx, quantize-dynamic, quantize-static, prune, vocab,
sparsity) are refused before anything is written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import child_manifest
from kiln.config.schema import CastConfig, CompressConfig, LanguageModelConfig, QuantizeConfig, Recipe

if TYPE_CHECKING:
    from kiln.runtime.generation import Generator

log = logging.getLogger(__name__)

TASK = "text-generation"
TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}

# A step: (parent folder, parent manifest, destination, stage config, examples) -> manifest.
GenerationStep = Callable[[Path, dict[str, Any], Path, CompressConfig, Examples], dict[str, Any]]


def quantize_int8(
    parent: Path, parent_manifest: dict[str, Any], dest: Path, cfg: QuantizeConfig, examples: Examples
) -> dict[str, Any]:
    """int8 weights for every ``nn.Linear`` (the output head too), activations quantized per token.

    ``torch.ao`` dynamic int8 Linear runs fbgemm's int8 kernels on x86; at batch 1 a decode step
    reads a quarter of the bytes of fp32 for its matrices. The embedding stays fp32 (a lookup).
    Before quantizing, SmoothQuant (``quantize.smooth_alpha``, ``kiln.compress.smoothing``)
    rescales the model on ``quantize.calibration_samples`` training texts. Each token's
    activations get their own scale (``kiln.runtime.quantized.PerTokenDynamicLinear``), so a
    scored row or a prompt is quantized as a decode step quantizes its one token; on CPUs with
    VNNI or AMX they take all 8 bits.

    Raises:
        CompressError: smoothing is on and there is no training text to calibrate on.
    """
    from kiln.compress.smoothing import smooth_activations
    from kiln.runtime.quantized import TORCH_INT8_METHOD, has_int8_dot_product, quantize_linear_dynamic

    teacher = _load(parent, parent_manifest)
    length = _sequence_length(parent_manifest, teacher)
    rows = scoring_rows(teacher, examples.eval_inputs, sequence_length=length)
    parent_nll = _perplexity(teacher, rows)
    calibration = list(examples.train_inputs[: cfg.calibration_samples])
    smoothed = 0
    if cfg.smooth_alpha > 0:
        if not calibration:
            raise CompressError(
                f"{parent}: quantize-torch calibrates SmoothQuant on training text and has none; "
                "give a recipe with data, or set quantize.smooth_alpha=0"
            )
        calibration_rows, _ = scoring_rows(teacher, calibration, sequence_length=length)
        smoothed = smooth_activations(teacher.model, calibration_rows, alpha=cfg.smooth_alpha)
    full_range = has_int8_dot_product()
    model = quantize_linear_dynamic(teacher.model, per_channel=cfg.per_channel, full_range=full_range, per_token=True)
    settings = {
        "per_channel": cfg.per_channel,
        "method": TORCH_INT8_METHOD,
        "smooth_alpha": cfg.smooth_alpha,
        "calibration_samples": len(calibration) if cfg.smooth_alpha > 0 else 0,
        "full_range_activations": full_range,
        "per_token_activations": True,
    }
    metrics = perplexity_metrics(parent_nll, _perplexity(_with_model(teacher, model), rows))
    metrics["smoothed_layers"] = smoothed
    return _write(
        parent,
        parent_manifest,
        dest,
        teacher,
        model=model,
        step="quantize-torch",
        settings=settings,
        metrics=metrics,
        precision="int8",
    )


def cast_weights(
    parent: Path, parent_manifest: dict[str, Any], dest: Path, cfg: CastConfig, examples: Examples
) -> dict[str, Any]:
    """Every weight cast to ``cfg.dtype`` (bf16 keeps fp32's exponent range; fp16 does not)."""
    import torch

    teacher = _load(parent, parent_manifest)
    rows = scoring_rows(teacher, examples.eval_inputs, sequence_length=_sequence_length(parent_manifest, teacher))
    parent_nll = _perplexity(teacher, rows)
    model = teacher.model.to(getattr(torch, TORCH_DTYPES[cfg.dtype]))  # in place: the parent is scored
    metrics = perplexity_metrics(parent_nll, _perplexity(teacher, rows))
    settings = cfg.model_dump(mode="json")
    return _write(
        parent,
        parent_manifest,
        dest,
        teacher,
        model=model,
        step="cast",
        settings=settings,
        metrics=metrics,
        precision=cfg.dtype,
    )


def distill_student(
    parent: Path, parent_manifest: dict[str, Any], dest: Path, cfg: CompressConfig, examples: Examples
) -> dict[str, Any]:
    """A student with fewer layers, initialised from the teacher's, trained on its softened logits."""
    from kiln.compress.lm_distill import build_student, check_settings, distill_causal_lm
    from kiln.runtime.weights import count_parameters

    settings = cfg.distill
    check_settings(settings)
    teacher = _load(parent, parent_manifest)
    length = _sequence_length(parent_manifest, teacher)
    rows = scoring_rows(teacher, examples.eval_inputs, sequence_length=length)
    if not examples.train_inputs:
        raise CompressError(f"{parent}: distill has no training text (the recipe's train split is empty)")
    train_rows = scoring_rows(teacher, examples.train_inputs, sequence_length=length)
    parent_nll = _perplexity(teacher, rows)
    student, layer_map = build_student(teacher.model, settings)
    seed = int((parent_manifest.get("recipe") or {}).get("seed", 0))
    report = distill_causal_lm(teacher.model, student, train_rows, settings, seed=seed)
    metrics = perplexity_metrics(parent_nll, _perplexity(_with_model(teacher, student), rows))
    metrics["distillation"] = {
        "teacher_layers": int(teacher.model.config.num_hidden_layers),
        "student_layers": len(layer_map),
        "layer_map": layer_map,
        "teacher_parameters": count_parameters(teacher.model),
        "student_parameters": count_parameters(student),
        **report,
    }
    recorded = settings.model_dump(mode="json")
    return _write(
        parent,
        parent_manifest,
        dest,
        teacher,
        model=student,
        step="distill",
        settings=recorded,
        metrics=metrics,
        precision="fp32",
    )


def _quantize_step(
    parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples
) -> dict[str, Any]:
    return quantize_int8(parent, manifest, dest, cfg.quantize, ex)


def _cast_step(parent: Path, manifest: dict[str, Any], dest: Path, cfg: CompressConfig, ex: Examples) -> dict[str, Any]:
    return cast_weights(parent, manifest, dest, cfg.cast, ex)


GENERATION_STEPS: dict[str, GenerationStep] = {
    "quantize-torch": _quantize_step,
    "cast": _cast_step,
    "distill": distill_student,
}


def check_steps(parent: Path, manifest: dict[str, Any], names: Sequence[str], cfg: CompressConfig) -> None:
    """Refuse, before anything is written, a step that does not apply to a text-generation package
    or one whose parent in the chain will not be fp32 (int8 and cast packages are final).

    Raises:
        CompressError: naming the step, the task and the steps that apply.
    """
    precision = manifest.get("precision")
    for name in names:
        if name not in GENERATION_STEPS:
            raise CompressError(
                f"{parent}: step {name!r} does not apply to a {TASK!r} package; "
                f"the steps for {TASK} are {', '.join(GENERATION_STEPS)}"
            )
        if precision != "fp32":
            raise CompressError(
                f"{parent}: step {name!r} needs a fp32 {TASK} package, and its parent in this chain is "
                f"{precision!r}; put quantize-torch or cast last"
            )
        precision = {"quantize-torch": "int8", "cast": cfg.cast.dtype}.get(name, "fp32")


def scoring_rows(
    generator: Generator, items: Sequence[Any], *, sequence_length: int
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token rows of documents or conversations, and their loss masks (``None``: every token).

    Documents are joined with EOS and cut into rows of ``sequence_length`` (one shorter row when
    they hold fewer tokens), as pretraining packs them; a conversation is one row through the
    package's chat template (after the package's system prompt, unless it has its own), scored
    on the assistant's reply only, as supervised fine-tuning learns it.
    """
    from kiln.data.chat import token_rows

    if not items:
        raise CompressError("no text to score the packages on (the validation split is empty)")
    is_documents = all(isinstance(item, str) for item in items)
    if not is_documents and generator.chat_template is None:
        raise CompressError(f"{generator.path}: conversations to score, but the package has no chat template")
    rows, masks = token_rows(
        generator.tokenizer,
        items,
        sequence_length=sequence_length,
        eos_token=generator.special_tokens["eos_token"],
        chat_template=generator.chat_template,
        special_tokens=generator.special_tokens,
        system_prompt=generator.system_prompt,
        is_short_row_allowed=True,
    )
    return [row.tolist() for row in rows], None if is_documents else [mask.tolist() for mask in masks]


def perplexity_metrics(parent: tuple[float, int], child: tuple[float, int]) -> dict[str, Any]:
    """Perplexities of child and parent from their (summed NLL, token count) on the same rows."""
    parent_ppl = math.exp(parent[0] / max(1, parent[1]))
    child_ppl = math.exp(child[0] / max(1, child[1]))
    return {
        "perplexity": child_ppl,
        "parent_perplexity": parent_ppl,
        "perplexity_change": child_ppl / parent_ppl - 1.0,
        "scored_tokens": child[1],
    }


def _load(parent: Path, manifest: dict[str, Any]) -> Generator:
    from kiln.runtime.generation import generator_from_manifest

    return generator_from_manifest(parent, manifest, device="cpu", num_threads=None)


def _with_model(generator: Generator, model: Any) -> Generator:
    """The same package's tokenizer, template and settings around another model."""
    from kiln.runtime.generation import Generator

    return Generator(
        path=generator.path,
        manifest=generator.manifest,
        model=model,
        tokenizer=generator.tokenizer,
        chat_template=generator.chat_template,
    )


def _perplexity(generator: Generator, rows: tuple[list[list[int]], list[list[int]] | None]) -> tuple[float, int]:
    token_ids, masks = rows
    return generator.score(token_ids, loss_mask=masks)


def _sequence_length(manifest: dict[str, Any], generator: Generator) -> int:
    """Tokens per scored row: the recipe's ``lm.sequence_length`` (its default without a recipe),
    at most the package's context length."""
    from pydantic import ValidationError

    try:
        length = Recipe.model_validate(manifest.get("recipe") or {}).lm.sequence_length
    except ValidationError:
        length = LanguageModelConfig().sequence_length
    return min(length, generator.context_length)


def _write(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    teacher: Generator,
    *,
    model: Any,
    step: str,
    settings: dict[str, Any],
    metrics: dict[str, Any],
    precision: str,
) -> dict[str, Any]:
    from kiln.runtime.generation import write_generation_package
    from kiln.runtime.package import packaged_file

    """Write ``model`` as the child of ``parent`` made by ``step``, with the teacher's tokenizer and template."""
    manifest = child_manifest(parent, parent_manifest, transformation=step, settings=settings)
    manifest["metrics"] = metrics
    tokenizer = packaged_file(parent, parent_manifest, parent_manifest["preprocessing"]["tokenizer_file"])
    log.info("%s: perplexity %.4g (parent %.4g)", step, metrics["perplexity"], metrics["parent_perplexity"])
    return write_generation_package(
        dest,
        model=model,
        tokenizer_file=tokenizer,
        chat_template=teacher.chat_template,
        manifest=manifest,
        precision=precision,
    )
