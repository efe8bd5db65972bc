"""The training stage: ``run(recipe) -> TrainResult`` trains a model and writes its package.

Reads top to bottom: join the (optional) process group, prepare data, build the model, fit,
and, on rank 0, write the model package with its manifest.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kiln.config.home import kiln_home
from kiln.config.schema import Recipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where the run and its package are, and what it measured."""

    run_dir: Path
    package_dir: Path | None  # None on ranks other than 0
    metrics: dict[str, float]
    steps: int
    samples_per_s: float


def run_dir_for(recipe: Recipe) -> Path:
    """The run folder a recipe trains into."""
    if recipe.train.output_dir:
        return Path(recipe.train.output_dir)
    return kiln_home() / "runs" / recipe.name


def check_recipe(recipe: Recipe, *, resume: bool = False, processes: int = 1) -> None:
    """Refuse what this recipe's trainer cannot honour, before anything is built or written.

    Args:
        processes: how many training processes take part, on all machines together.

    Raises:
        ConfigError: a recommender recipe with classifier-only settings, asked to resume, or
            given more than one process.
    """
    from kiln.data.interactions import is_recommendation_dataset

    if recipe.is_generation:
        from kiln.train import lm

        lm.check_settings(recipe, resume=resume, processes=processes)
    elif is_recommendation_dataset(recipe.data.dataset):
        from kiln.train import recommend

        recommend.check_settings(recipe, resume=resume, processes=processes)


def run(recipe: Recipe, *, resume: bool = False) -> TrainResult:
    """Train the recipe's model and write its package to ``<run_dir>/package``.

    Raises:
        ConfigError: settings the recipe's trainer refuses (see ``check_recipe``).
    """
    import torch

    from kiln.data.interactions import is_recommendation_dataset

    # A worker torchrun started by hand sees the run's size only in WORLD_SIZE.
    check_recipe(recipe, resume=resume, processes=int(os.environ.get("WORLD_SIZE", "1")))
    if recipe.is_generation:
        return _run_language_model(recipe, resume=resume)
    if is_recommendation_dataset(recipe.data.dataset):
        return _run_recommendation(recipe)

    import kiln.data
    from kiln.runtime.preprocessing import ImagePreprocessor, TextPreprocessor
    from kiln.runtime.profile import write_reference_profile
    from kiln.runtime.weights import write_torch_package
    from kiln.train.distributed import barrier, init_from_env, shutdown
    from kiln.train.features import ImageFeatures, TextFeatures
    from kiln.train.loop import fit
    from kiln.train.models import build_model, prepare_tokenizer

    info = init_from_env()
    try:
        threads = recipe.train.num_threads or max(1, (os.cpu_count() or 1) // info.local_world_size)
        torch.set_num_threads(threads)
        _seed_everything(recipe.train_seed)

        dataset = kiln.data.run(recipe)
        run_dir = run_dir_for(recipe)
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer_file = None
        if dataset.kind == "text":
            tokenizer_file = run_dir / "tokenizer.json"
            if info.is_main:
                prepare_tokenizer(recipe, dataset, tokenizer_file, reuse=resume)
            barrier(info)
        built = build_model(recipe, dataset, tokenizer_file)
        # Same initial weights on every rank (seeded above); dropout differs per rank.
        torch.manual_seed(recipe.train_seed + info.rank)
        if dataset.kind == "text":
            assert isinstance(built.preprocessor, TextPreprocessor)  # build_model follows dataset.kind
            train_features: Any = TextFeatures(built.preprocessor, list(dataset.train.inputs))
            val_features: Any = TextFeatures(built.preprocessor, list(dataset.validation.inputs))
        else:
            assert isinstance(built.preprocessor, ImagePreprocessor)
            train_features = ImageFeatures(built.preprocessor, dataset.train.inputs, recipe.data.augment.image)
            val_features = ImageFeatures(built.preprocessor, dataset.validation.inputs)

        result = fit(
            built.model,
            train=train_features,
            train_labels=dataset.train.labels,
            validation=val_features,
            validation_labels=dataset.validation.labels,
            num_labels=len(dataset.label_names),
            cfg=recipe.train,
            seed=recipe.train_seed,
            info=info,
            run_dir=run_dir,
            resume=resume,
            eval_batch_size=recipe.eval.batch_size,
        )
        package_dir = None
        if info.is_main:
            package_dir = run_dir / "package"
            write_torch_package(
                package_dir,
                model=built.model.cpu(),
                architecture=built.architecture,
                manifest={
                    "name": recipe.name,
                    "task": dataset.task,
                    "labels": dataset.label_names,
                    "input_schema": built.input_schema,
                    "preprocessing": built.preprocessing,
                    "precision": "fp32",
                    "lineage": {
                        "parent": built.parent,
                        "transformation": "train",
                        "settings": {
                            "steps": result.steps,
                            "best_step": result.best_step,
                            "world_size": info.world_size,
                            "stopped_early": result.stopped_early,
                        },
                    },
                    "metrics": {"validation": result.best_metrics},
                    "data_fingerprint": dataset.fingerprint,
                    "data": {"origin": dataset.origin, **dataset.stats},
                    "recipe": recipe.model_dump(mode="json"),
                    "training": {
                        "train_wall_s": round(result.train_wall_s, 3),
                        "samples_per_s": round(result.samples_per_s, 2),
                        "threads_per_process": threads,
                    },
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                extra_files=built.extra_files,
            )
            write_reference_profile(package_dir, list(dataset.validation.inputs))
        barrier(info)
    finally:
        shutdown(info)
    return TrainResult(
        run_dir=run_dir,
        package_dir=package_dir,
        metrics=result.best_metrics,
        steps=result.steps,
        samples_per_s=result.samples_per_s,
    )


def _run_language_model(recipe: Recipe, *, resume: bool) -> TrainResult:
    import torch

    from kiln.train import lm
    from kiln.train.distributed import init_from_env, shutdown

    info = init_from_env()
    try:
        threads = recipe.train.num_threads or max(1, (os.cpu_count() or 1) // info.local_world_size)
        torch.set_num_threads(threads)
        _seed_everything(recipe.train_seed)
        run_dir = run_dir_for(recipe)
        run_dir.mkdir(parents=True, exist_ok=True)
        return lm.run(recipe, run_dir, resume=resume, info=info, threads=threads)
    finally:
        shutdown(info)


def _run_recommendation(recipe: Recipe) -> TrainResult:
    import torch

    from kiln.train import recommend

    torch.set_num_threads(recipe.train.num_threads or max(1, os.cpu_count() or 1))
    _seed_everything(recipe.train_seed)
    run_dir = run_dir_for(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    fit = recommend.run(recipe, run_dir)
    return TrainResult(
        run_dir=run_dir,
        package_dir=fit.package_dir,
        metrics=fit.metrics,
        steps=fit.steps,
        samples_per_s=fit.samples_per_s,
    )


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
