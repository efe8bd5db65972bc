"""Knowledge distillation into a smaller student: fewer layers, narrower hidden/FFN, fewer heads.

The student is a plain BERT-like encoder built from the teacher's config with smaller sizes. It
starts either from random weights or from uniformly spaced teacher layers whose tensors are cut
down to the student's widths (weight selection, Xu et al. 2024, "Initializing Models with Larger
Ones"; with equal widths this is DistilBERT's take-every-other-layer initialisation). It then
learns from the teacher through ``distill_loop.distill_model`` on the package's training texts
(its recipe's data, optionally augmented, plus optional unlabelled texts).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compress.checks import check_against_parent
from kiln.compress.distill_loop import UNLABELLED, DistillData, distill_model, uniform_layer_map
from kiln.compress.errors import CompressError
from kiln.compress.examples import Examples
from kiln.compress.packaging import child_package
from kiln.config.schema import DistillConfig


def distill_package(
    parent: Path,
    parent_manifest: dict[str, Any],
    dest: Path,
    cfg: DistillConfig,
    examples: Examples,
) -> dict[str, Any]:
    """Write a package holding a student distilled from the parent (teacher) package.

    Raises:
        CompressError: the parent is not a fp32 transformer text package, the student would be
            bigger than its teacher, or there are no training texts.
    """
    import kiln.runtime
    from kiln.runtime.preprocessing import TextPreprocessor
    from kiln.runtime.weights import count_parameters, load_torch_model, save_torch_model

    require_text_torch(parent, parent_manifest, step="distill")
    teacher = load_torch_model(parent, parent_manifest)
    sizes = student_sizes(teacher.config, parent_manifest["architecture"], cfg)
    student = build_student(teacher, sizes, init=cfg.init)
    layer_map = sizes["layer_map"]
    predictor = kiln.runtime.load_classifier(parent, device="cpu", verify=False)
    assert isinstance(predictor.preprocessor, TextPreprocessor)
    data = training_data(parent_manifest, examples, cfg, predictor)
    seed = int((parent_manifest.get("recipe") or {}).get("seed", 0))
    report = distill_model(
        teacher,
        student,
        data,
        predictor.preprocessor.collate,
        cfg,
        layer_map=layer_map,
        seed=seed,
    )
    settings = cfg.model_dump(mode="json")
    with child_package(
        parent, parent_manifest, dest, transformation="distill", settings=settings
    ) as child:
        child.manifest.update(
            format="torch",
            precision="fp32",
            architecture=save_torch_model(student, child.staging, {"family": "hf"}),
        )
        child.finalize()
        child.manifest["metrics"] = {
            "distillation": {
                "teacher_parameters": count_parameters(teacher),
                "student_parameters": count_parameters(student),
                **sizes,
                "init": cfg.init,
                **report,
            },
            "agreement": check_against_parent(
                parent, child.staging, examples.eval_inputs, examples.eval_labels
            ),
        }
        return child.finalize()


def require_text_torch(parent: Path, manifest: dict[str, Any], *, step: str) -> None:
    """Raise ``CompressError`` unless ``manifest`` is a fp32 torch transformer text package."""
    if manifest.get("task") != "text-classification":
        raise CompressError(
            f"{parent}: {step} supports text-classification packages, not {manifest.get('task')!r}"
        )
    if manifest.get("format") != "torch" or manifest.get("precision") != "fp32":
        raise CompressError(
            f"{parent}: {step} needs a fp32 torch package, got format "
            f"{manifest.get('format')!r} precision {manifest.get('precision')!r}"
        )
    if manifest.get("architecture", {}).get("family") != "hf":
        raise CompressError(f"{parent}: {step} supports transformer (hf) packages")


def student_sizes(
    teacher_config: Any, architecture: dict[str, Any], cfg: DistillConfig
) -> dict[str, Any]:
    """The student's layers, widths, heads and teacher layer map; refuses one bigger than its teacher.

    A pruned teacher's per-layer sizes count as its smallest layer's.
    """
    t_layers = int(teacher_config.num_hidden_layers)
    t_hidden = int(teacher_config.hidden_size)
    t_heads = min(architecture.get("heads_per_layer") or [teacher_config.num_attention_heads])
    t_ffn = min(architecture.get("ffn_sizes") or [teacher_config.intermediate_size])
    head_size = t_hidden // int(teacher_config.num_attention_heads)
    layers = cfg.num_layers or math.ceil(t_layers / 2)
    hidden = cfg.hidden_size or t_hidden
    heads = cfg.num_heads or (t_heads if hidden == t_hidden else max(1, hidden // head_size))
    ffn = cfg.intermediate_size or max(8, t_ffn * hidden // t_hidden)
    bigger = [
        f"{name} {s} > {t}"
        for name, s, t in (
            ("num_layers", layers, t_layers),
            ("hidden_size", hidden, t_hidden),
            ("num_heads", heads, t_heads),
            ("intermediate_size", ffn, t_ffn),
        )
        if s > t
    ]
    if bigger:
        raise CompressError(
            "distill: the student would be bigger than its teacher (" + ", ".join(bigger) + ")"
        )
    if hidden % heads:
        raise CompressError(f"distill: hidden_size {hidden} is not a multiple of num_heads {heads}")
    return {
        "num_layers": layers,
        "hidden_size": hidden,
        "num_heads": heads,
        "intermediate_size": ffn,
        "layer_map": uniform_layer_map(t_layers, layers),
    }


def student_config(teacher_config: Any, sizes: dict[str, Any]) -> Any:
    """The teacher's transformers config with the student's depth and widths."""
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = sizes["num_layers"]
    config.hidden_size = sizes["hidden_size"]
    config.num_attention_heads = sizes["num_heads"]
    config.intermediate_size = sizes["intermediate_size"]
    return config


def build_student(teacher: Any, sizes: dict[str, Any], *, init: str) -> Any:
    """A randomly initialised student of ``sizes``, then (``teacher-layers``) weight-selected."""
    from kiln.runtime.architectures import build_text_classifier

    student = build_text_classifier(student_config(teacher.config, sizes))
    if init == "teacher-layers":
        select_teacher_weights(student, teacher, sizes["layer_map"])
    return student


def select_teacher_weights(student: Any, teacher: Any, layer_map: list[int]) -> None:
    """Copy into each student tensor the leading slice of its teacher tensor.

    Student encoder layer ``i`` takes teacher layer ``layer_map[i]``; everything else
    (embeddings, pooler, classifier) takes the tensor of the same name.
    """
    import torch

    source = teacher.state_dict()
    prefix = f"{student.base_model_prefix}.encoder.layer."
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            key = name
            if name.startswith(prefix):
                index, rest = name[len(prefix) :].split(".", 1)
                key = f"{prefix}{layer_map[int(index)]}.{rest}"
            if key not in source:
                continue
            src = source[key]
            if src.ndim != tensor.ndim or any(
                s > t for s, t in zip(tensor.shape, src.shape, strict=True)
            ):
                raise CompressError(
                    f"distill: cannot initialise {name} {tuple(tensor.shape)} from the teacher's "
                    f"{tuple(src.shape)}; use distill.init=scratch"
                )
            tensor.copy_(src[tuple(slice(0, n) for n in tensor.shape)])


def training_data(
    manifest: dict[str, Any], examples: Examples, cfg: DistillConfig, predictor: Any
) -> DistillData:
    """Tokenised training texts: the recipe's train split (else ``examples``), augmented copies
    and unlabelled texts as configured."""
    from kiln.data.augment import augment_texts

    texts, labels = _labelled_texts(manifest, examples, predictor.labels)
    if cfg.augment.methods:
        seed = int((manifest.get("recipe") or {}).get("seed", 0))
        texts, labels = augment_texts(texts, labels, cfg.augment, np.random.default_rng(seed))
        texts = list(texts)
    if cfg.ignore_labels:
        labels = np.full(len(texts), UNLABELLED, dtype=np.int64)
    if cfg.unlabelled_file:
        extra = _read_lines(Path(cfg.unlabelled_file))
        texts = texts + extra
        labels = np.concatenate([labels, np.full(len(extra), UNLABELLED, dtype=np.int64)])
    if not texts:
        raise CompressError("distill: no training texts (the train split is empty)")
    return DistillData(token_ids=predictor.preprocessor.encode(texts), labels=labels)


def _labelled_texts(
    manifest: dict[str, Any], examples: Examples, label_names: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    from pydantic import ValidationError

    from kiln.config.schema import Recipe

    try:
        recipe = Recipe.model_validate(manifest.get("recipe") or {})
    except ValidationError:
        recipe = None
    if recipe is not None:
        import kiln.data

        dataset = kiln.data.run(recipe)
        if dataset.label_names != list(label_names):
            raise CompressError(
                "distill: the recipe's data now has different labels than the package"
            )
        return list(dataset.train.inputs), np.asarray(dataset.train.labels, dtype=np.int64)
    index = {name: i for i, name in enumerate(label_names)}
    texts = list(examples.train_inputs)
    if examples.train_labels is None:
        return texts, np.full(len(texts), UNLABELLED, dtype=np.int64)
    unknown = sorted({str(lab) for lab in examples.train_labels} - set(index))
    if unknown:
        raise CompressError(f"distill: labels {unknown[:5]} are not among {list(label_names)}")
    return texts, np.array([index[str(lab)] for lab in examples.train_labels], dtype=np.int64)


def _read_lines(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CompressError(f"distill.unlabelled_file: cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CompressError(f"distill.unlabelled_file: {path} is not UTF-8 text: {exc}") from None
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if not lines:
        raise CompressError(f"distill.unlabelled_file: {path} holds no texts")
    return lines
