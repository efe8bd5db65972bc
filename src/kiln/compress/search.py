"""Search for the smallest package that meets a latency budget within an accuracy bound.

Candidates are student depths x structured-pruning fractions x ONNX precisions, built with the
ordinary steps (vocab -> distill -> prune -> onnx -> quantize-dynamic; the vocabulary is trimmed
once, to the tokens of the training texts, before anything else) and each measured through the
runtime: accuracy on the validation examples and p50 latency at batch 1. The search walks from
the largest model to the smallest and prunes what cannot win:

- a student (or pruned model) already below the accuracy bound in fp32 is not pruned further or
  quantized (pruning and int8 do not raise accuracy in practice);
- once a candidate meets both constraints, anything that cannot be smaller on disk is skipped:
  a branch whose parameter count is already at least that size in int8 bytes, or a built
  package at least that size, is not evaluated.

It writes every candidate and ``search.json`` to the output folder and returns the Pareto front
(accuracy vs p50 latency) and the smallest package that meets both constraints, or says which
constraint no candidate met and by how much.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples, examples_from_recipe, train_samples_needed
from kiln.config.schema import CompressConfig, DistillConfig
from kiln.config.section import Section

log = logging.getLogger(__name__)

QUANTIZATIONS: tuple[Literal["fp32", "int8"], ...] = ("fp32", "int8")  # ONNX fp32, ONNX Runtime dynamic int8


class SearchConfig(Section):
    """The budget and the space searched; ``SearchConfig.parse`` refuses bad values with a ConfigError."""

    config_kind: ClassVar[str] = "search budget"

    # p50 latency at batch 1 to reach, in ms, measured through the runtime.
    target_latency_ms: float = Field(gt=0)
    # Accuracy points (1.0 = one percentage point) allowed below the teacher.
    max_accuracy_drop: float = Field(ge=0, le=100)
    # Student depths to try; the teacher's, then halved, when empty.
    student_layers: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(default=None, min_length=1)
    # Fractions of attention heads and FFN neurons removed, each in [0, 1).
    prune_fractions: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field(default=(0.0, 0.25, 0.5), min_length=1)
    # ONNX precisions tried for every model.
    quantizations: tuple[Literal["fp32", "int8"], ...] = Field(default=QUANTIZATIONS, min_length=1)
    # Candidates evaluated at most.
    max_candidates: int = Field(default=12, ge=1)
    # Timed batch-1 calls per candidate.
    latency_runs: int = Field(default=30, ge=1)
    # Intra-op threads when timing (1 is the most repeatable); the library default when empty.
    num_threads: int | None = Field(default=1, ge=1)
    # First keep only the embedding rows of tokens the data uses.
    trim_vocab: bool = True


@dataclass(frozen=True)
class SearchResult:
    """Every candidate measured, what was skipped and why, the front and the choice."""

    teacher: dict[str, Any]  # the teacher's accuracy, p50 latency and size
    candidates: list[dict[str, Any]]  # measured candidates, in the order built
    skipped: list[dict[str, Any]]  # {"id", "reason"} of branches not evaluated
    pareto: list[str]  # ids of the Pareto-optimal candidates, fastest first
    chosen: dict[str, Any] | None  # the smallest candidate meeting both constraints
    failure: str | None  # which constraint no candidate met, and by how much
    report: Path  # search.json


@dataclass
class _State:
    teacher_accuracy: float
    cfg: SearchConfig
    candidates: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    best_size: int | None = None  # size of the smallest candidate meeting both constraints
    # Why pruning and vocab trimming cannot apply (they follow BERT's layer layout), or None.
    no_surgery: str | None = None

    def drop(self, accuracy: float) -> float:
        return 100.0 * (self.teacher_accuracy - accuracy)

    def within_accuracy(self, accuracy: float) -> bool:
        return self.drop(accuracy) <= self.cfg.max_accuracy_drop + 1e-9

    def is_full(self) -> bool:
        return len(self.candidates) >= self.cfg.max_candidates

    def skip(self, ident: str, reason: str) -> None:
        log.info("search: skip %s: %s", ident, reason)
        self.skipped.append({"id": ident, "reason": reason})

    def cannot_be_smaller(self, size_bytes: int) -> bool:
        return self.best_size is not None and size_bytes >= self.best_size


def search(
    package: str | Path,
    *,
    output_dir: str | Path,
    budget: SearchConfig,
    config: CompressConfig | None = None,
    examples: Examples | None = None,
) -> SearchResult:
    """Explore student sizes x pruning x quantization for the smallest package within budget.

    Raises:
        CompressError: the package cannot be compressed this way, has no labelled examples to
            measure accuracy on, or a student depth is deeper than the teacher.
    """
    from kiln.compress.distill import require_text_torch
    from kiln.runtime.package import read_manifest

    cfg = config or CompressConfig()
    teacher = Path(package)
    manifest = read_manifest(teacher)
    require_text_torch(teacher, manifest, step="search")
    if examples is None:
        examples = examples_from_recipe(
            manifest,
            eval_samples=cfg.eval_samples,
            train_samples=train_samples_needed(cfg, ["vocab"] if budget.trim_vocab else []),
        )
    if examples is None or examples.eval_labels is None:
        raise CompressError(
            f"{teacher}: the search needs labelled validation examples to measure accuracy; "
            "its manifest records no recipe with data"
        )
    teacher_config = _teacher_config(teacher)
    teacher_layers = int(teacher_config.num_hidden_layers)
    depths = _depths(teacher_layers, budget.student_layers)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = measure_candidate(teacher, examples, budget)
    state = _State(teacher_accuracy=reference["accuracy"], cfg=budget)
    if teacher_config.model_type != "bert":
        state.no_surgery = f"pruning and vocab trimming support BERT-family encoders, not {teacher_config.model_type!r}"
    base, base_manifest = teacher, manifest
    if budget.trim_vocab and state.no_surgery:
        state.skip("vocab", state.no_surgery)
    elif budget.trim_vocab:
        from kiln.compress.vocab import trim_vocabulary

        base = out / "vocab"
        base_manifest = trim_vocabulary(teacher, manifest, base, cfg.vocab, examples)
    for depth in depths:
        if state.is_full():
            state.skip(f"L{depth}", f"the budget of {budget.max_candidates} candidates is spent")
            continue
        _search_student(base, base_manifest, depth, teacher_layers, out, cfg, examples, state)
    return _finish(out, reference, state, budget)


def measure_candidate(path: Path, examples: Examples, budget: SearchConfig) -> dict[str, Any]:
    """Accuracy on the validation examples, p50 latency at batch 1 and size of one package."""
    import numpy as np

    import kiln.runtime
    from kiln.compress.checks import logits_of_inputs
    from kiln.runtime.measures import measure_speed, package_size_bytes

    predictor = kiln.runtime.load_classifier(path, device="cpu", num_threads=budget.num_threads, verify=False)
    index = {name: i for i, name in enumerate(predictor.labels)}
    truth = np.array([index.get(str(label), -1) for label in examples.eval_labels or []])
    predicted = logits_of_inputs(predictor, examples.eval_inputs).argmax(axis=1)
    speed = measure_speed(
        predictor, examples.eval_inputs, batch_sizes=(), latency_runs=budget.latency_runs
    )
    return {
        "path": str(path),
        "accuracy": float(np.mean(predicted == truth)),
        "latency_p50_ms": speed["latency_ms"]["p50"],
        "size_bytes": package_size_bytes(path),
    }


def _search_student(
    teacher: Path,
    manifest: dict[str, Any],
    depth: int,
    teacher_layers: int,
    out: Path,
    cfg: CompressConfig,
    examples: Examples,
    state: _State,
) -> None:
    from kiln.compress.distill import distill_package
    from kiln.runtime.package import read_manifest

    ident = f"L{depth}"
    if depth == teacher_layers:
        base, base_manifest = teacher, manifest
    else:
        distill_cfg = cfg.distill.model_copy(update={"num_layers": depth})
        lower_bound = _student_parameters(teacher, manifest, distill_cfg)
        if state.cannot_be_smaller(lower_bound):  # int8: at least one byte per parameter
            state.skip(ident, f"cannot be smaller than {state.best_size} bytes even in int8")
            return
        base = out / ident / "distill"
        base_manifest = distill_package(teacher, manifest, base, distill_cfg, examples)
    accuracy = measure_candidate(base, examples, state.cfg)["accuracy"]
    if depth != teacher_layers and not state.within_accuracy(accuracy):
        state.skip(
            ident,
            f"the fp32 student is already {state.drop(accuracy):.2f} points below the teacher "
            f"(bound {state.cfg.max_accuracy_drop}); its pruned and int8 variants are skipped",
        )
        return
    for fraction in sorted(state.cfg.prune_fractions):
        branch = f"{ident}-p{int(round(100 * fraction))}"
        if fraction > 0 and state.no_surgery:
            state.skip(branch, state.no_surgery)
            continue
        if state.is_full():
            state.skip(branch, f"the budget of {state.cfg.max_candidates} candidates is spent")
            return
        model, model_manifest = base, base_manifest
        if fraction > 0:
            model = out / ident / f"prune{int(round(100 * fraction))}"
            model_manifest = _prune(base, base_manifest, model, cfg, fraction, examples)
            pruned_accuracy = measure_candidate(model, examples, state.cfg)["accuracy"]
            if not state.within_accuracy(pruned_accuracy):
                state.skip(
                    branch,
                    f"pruned in fp32 it is {state.drop(pruned_accuracy):.2f} points below the "
                    "teacher; larger fractions and its int8 variant are skipped",
                )
                return
        params = _parameters(model, model_manifest)
        if state.cannot_be_smaller(params):
            state.skip(branch, f"cannot be smaller than {state.best_size} bytes even in int8")
            continue
        _search_precisions(model, read_manifest(model), branch, out, cfg, examples, state)


def _search_precisions(
    model: Path,
    manifest: dict[str, Any],
    branch: str,
    out: Path,
    cfg: CompressConfig,
    examples: Examples,
    state: _State,
) -> None:
    from kiln.compress.onnx_export import export_onnx
    from kiln.compress.quantize import quantize_onnx_dynamic
    from kiln.runtime.measures import package_size_bytes

    onnx_dir = out / "candidates" / f"{branch}-fp32"
    onnx_manifest = export_onnx(model, manifest, onnx_dir, cfg.onnx, examples)
    for precision in state.cfg.quantizations:
        ident = f"{branch}-{precision}"
        if state.is_full():
            state.skip(ident, f"the budget of {state.cfg.max_candidates} candidates is spent")
            return
        path = onnx_dir
        if precision == "int8":
            path = out / "candidates" / ident
            quantize_onnx_dynamic(onnx_dir, onnx_manifest, path, cfg.quantize, examples)
        size = package_size_bytes(path)
        if state.cannot_be_smaller(size):
            state.skip(ident, f"{size} bytes is not smaller than the best, {state.best_size} bytes")
            continue
        measured = measure_candidate(path, examples, state.cfg)
        candidate = {
            "id": ident,
            **measured,
            "accuracy_drop_points": state.drop(measured["accuracy"]),
            "precision": precision,
            "meets_latency": measured["latency_p50_ms"] <= state.cfg.target_latency_ms,
            "meets_accuracy": state.within_accuracy(measured["accuracy"]),
        }
        state.candidates.append(candidate)
        log.info("search: %s", candidate)
        if candidate["meets_latency"] and candidate["meets_accuracy"]:
            state.best_size = min(size, state.best_size or size)


def _finish(
    out: Path, reference: dict[str, Any], state: _State, budget: SearchConfig
) -> SearchResult:
    from kiln.runtime.measures import pareto_front

    rows = state.candidates
    front = pareto_front([(c["latency_p50_ms"], c["accuracy"]) for c in rows])
    for i, c in enumerate(rows):
        c["pareto"] = i in front
    meeting = [c for c in rows if c["meets_latency"] and c["meets_accuracy"]]
    chosen = min(meeting, key=lambda c: (c["size_bytes"], c["latency_p50_ms"])) if meeting else None
    failure = None if chosen is not None else _failure(rows, budget, state)
    if chosen is not None:
        chosen = dict(
            chosen,
            size_ratio=reference["size_bytes"] / chosen["size_bytes"],
            latency_ratio=reference["latency_p50_ms"] / chosen["latency_p50_ms"],
        )
    report = out / "search.json"
    pareto: list[str] = [rows[i]["id"] for i in front]
    payload = {
        "budget": {
            "target_latency_ms": budget.target_latency_ms,
            "max_accuracy_drop": budget.max_accuracy_drop,
            "max_candidates": budget.max_candidates,
            "num_threads": budget.num_threads,
        },
        "teacher": reference,
        "candidates": rows,
        "skipped": state.skipped,
        "pareto": pareto,
        "chosen": chosen,
        "failure": failure,
    }
    report.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return SearchResult(
        teacher=reference,
        candidates=rows,
        skipped=state.skipped,
        pareto=pareto,
        chosen=chosen,
        failure=failure,
        report=report,
    )


def _failure(rows: list[dict[str, Any]], budget: SearchConfig, state: _State) -> str:
    if not rows:
        return "no candidate was evaluated: " + "; ".join(s["reason"] for s in state.skipped[:3])
    accurate = [c for c in rows if c["meets_accuracy"]]
    if not accurate:
        best = min(rows, key=lambda c: c["accuracy_drop_points"])
        return (
            f"no candidate is within {budget.max_accuracy_drop} accuracy points of the teacher: "
            f"the closest, {best['id']}, is {best['accuracy_drop_points']:.2f} points below "
            f"({best['accuracy_drop_points'] - budget.max_accuracy_drop:.2f} over the bound)"
        )
    pool = accurate if any(c["meets_latency"] for c in rows) else rows
    fastest = min(pool, key=lambda c: c["latency_p50_ms"])
    over = fastest["latency_p50_ms"] - budget.target_latency_ms
    scope = "within the accuracy bound " if pool is accurate else ""
    return (
        f"no candidate {scope}reaches the target p50 latency of {budget.target_latency_ms} ms: "
        f"the fastest, {fastest['id']}, takes {fastest['latency_p50_ms']:.3f} ms "
        f"({over:.3f} ms over)"
    )


def _prune(
    base: Path,
    manifest: dict[str, Any],
    dest: Path,
    cfg: CompressConfig,
    fraction: float,
    examples: Examples,
) -> dict[str, Any]:
    from kiln.compress.pruning import prune_structured

    prune_cfg = cfg.prune.model_copy(update={"heads_fraction": fraction, "ffn_fraction": fraction})
    return prune_structured(base, manifest, dest, prune_cfg, examples, recovery=cfg.distill)


def _teacher_config(teacher: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(teacher))


def _depths(layers: int, requested: tuple[int, ...] | None) -> list[int]:
    if requested is None:
        depths, d = [], layers
        while d >= 1:
            depths.append(d)
            d //= 2
        return depths
    deeper = [d for d in requested if d > layers]
    if deeper:
        raise CompressError(
            f"student layers {deeper} are deeper than the teacher's {layers}: a student must be smaller"
        )
    return sorted(set(requested), reverse=True)


def _parameters(path: Path, manifest: dict[str, Any]) -> int:
    from kiln.runtime.measures import package_parameters

    pruned = manifest["metrics"].get("pruning", {}).get("parameters_after")
    return int(pruned) if pruned is not None else package_parameters(path)


def _student_parameters(teacher: Path, manifest: dict[str, Any], cfg: DistillConfig) -> int:
    from kiln.compress.distill import student_config, student_sizes
    from kiln.runtime.architectures import build_text_classifier
    from kiln.runtime.weights import count_parameters

    config = _teacher_config(teacher)
    sizes = student_sizes(config, manifest["architecture"], cfg)
    return count_parameters(build_text_classifier(student_config(config, sizes)))
