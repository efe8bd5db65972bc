"""``kiln run``: the stages of a recipe in order, each talking to the next through packages.

data -> train -> compress (each step of the recipe's ``compress.steps``) -> evaluate every
package on the test split through the runtime -> time every package's latency -> register every
package with its lineage -> promote one through the recipe's gate. Each stage's output is keyed
by a hash of its inputs and of Kiln's code (``cache.py``), so re-running a recipe skips what is
done and an interrupted run resumes. Latency is never reused: it belongs to the machine and its
load, so every run times its packages (and the alias holders the gate compares with) afresh.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config.schema import Recipe
from kiln.pipeline import cache
from kiln.pipeline.promote import TimeLatency
from kiln.registry.gate import Candidate, Decision

if TYPE_CHECKING:
    from kiln.registry import Registry

logger = logging.getLogger(__name__)

Report = Callable[[str], None]
# Settings that change how a stage runs, never what it makes: left out of the stage keys.
_TRAIN_KEY_EXCLUDED = {"progress", "output_dir", "num_threads"}
_COMPRESS_KEY_EXCLUDED = {"steps", "num_threads"}
# Test metrics recorded for recommendation packages.
RANKING_METRICS = ("hr@10", "ndcg@10", "recall@20", "coverage@10")
# Test inputs cycled through for the batch-1 latency percentiles.
LATENCY_SAMPLE_SIZE = 64
PROMPT_CHARS = 200  # characters of a test document that prompt a pretrained language model when timing it


@dataclass(frozen=True)
class PackageOutcome:
    """One package the pipeline made, what it measured on it, and where it is registered."""

    step: str  # "train" or the compress step that made it
    path: Path  # the package folder
    digest: str  # its package digest
    metrics: dict[str, float] = field(default_factory=dict)  # test metrics, latency, size
    eval_dir: Path | None = None  # report.json and confusion_matrix.png
    ref: str = ""  # registry reference name@version
    is_new_version: bool = False  # registered by this run (not found already registered)
    skipped: tuple[str, ...] = ()  # stages whose output already existed for the same inputs


@dataclass(frozen=True)
class PipelineResult:
    """Every package with its metrics and version, the run record, and the gate's decision."""

    packages: list[PackageOutcome]  # train package first, then one per compress step
    run_id: str | None  # the registry run that registered new versions (None: nothing new)
    decision: Decision | None  # None when the recipe has no promote section
    data_fingerprint: str  # fingerprint of the data every stage used
    app_dir: Path | None = None  # the application package (support), when the recipe makes one
    app_report: dict[str, Any] | None = None  # what building the application measured


def run_pipeline(
    recipe: Recipe,
    *,
    registry: Registry | None = None,
    is_forced: bool = False,
    report: Report = logger.info,
) -> PipelineResult:
    """Run every stage of ``recipe`` and register (and maybe promote) what it makes.

    Args:
        recipe: the validated recipe.
        registry: a ``kiln.registry.Registry``; default: the one under ``KILN_HOME``.
        is_forced: redo every stage even when its output exists for the same inputs.
        report: receives one line per stage (done or skipped).
    """
    from kiln.registry import Registry
    from kiln.train import run_dir_for

    work_dir = run_dir_for(recipe)
    if recipe.support is not None and recipe.support.chat_package:
        from kiln.apps.grounded import resolve_chat_package

        resolve_chat_package(recipe.support.chat_package)  # a bad reference fails now, not after training
    origin, fingerprint, sample_inputs = _prepare_data(recipe)
    report(f"data: {origin}, {fingerprint}")
    if is_forced and work_dir.is_dir():
        report(f"forced: removing earlier stage outputs in {work_dir}")
        _clear_stage_outputs(work_dir)
    packages = [_train(recipe, fingerprint, work_dir, report)]
    for step in recipe.compress.steps:
        packages.append(_compress_step(recipe, step, packages[-1], work_dir, report))
    packages = [_evaluate(recipe, p, work_dir, report) for p in packages]
    time_latency = _latency_timer(recipe, sample_inputs, report)
    packages = [_timed(p, time_latency) for p in packages]

    opened = registry if registry is not None else Registry()
    try:
        packages, run_id = _register(opened, recipe, fingerprint, packages, report)
        decision = _promote(opened, recipe, fingerprint, packages, time_latency, report)
    finally:
        if registry is None:
            opened.close()
    app_dir, app_report = _build_app(recipe, packages[0], work_dir, report)
    return PipelineResult(packages, run_id, decision, fingerprint, app_dir, app_report)


def _prepare_data(recipe: Recipe) -> tuple[str, str, list[Any]]:
    """Where the data comes from, its fingerprint, and test inputs for timing latency."""
    from kiln.data.interactions import is_recommendation_dataset, load_interactions, split_leave_last_out

    if recipe.is_generation:
        return _prepare_language_data(recipe)
    if is_recommendation_dataset(recipe.data.dataset):
        assert recipe.data.dataset is not None
        splits = split_leave_last_out(
            load_interactions(recipe.data.dataset), min_interactions=recipe.recommend.min_interactions
        )
        return recipe.data.dataset, splits.fingerprint, []
    import kiln.data

    dataset = kiln.data.run(recipe)
    return dataset.origin, dataset.fingerprint, list(dataset.test.inputs[:LATENCY_SAMPLE_SIZE])


def _prepare_language_data(recipe: Recipe) -> tuple[str, str, list[Any]]:
    """A language model's data, fingerprint and test prompts: each test conversation without its
    answer, or the opening of each test document."""
    import kiln.data

    data = kiln.data.load_language_data(recipe)
    prompts: list[Any] = []
    for item in data.test[:LATENCY_SAMPLE_SIZE]:
        prompts.append(list(item[:-1]) if data.objective == "sft" else str(item)[:PROMPT_CHARS])
    return data.origin, data.fingerprint, prompts


def _build_app(
    recipe: Recipe, classifier: PackageOutcome, work_dir: Path, report: Report
) -> tuple[Path | None, dict[str, Any] | None]:
    """The customer-service app package built on the trained classifier, for a ``support`` recipe."""
    if recipe.support is None:
        return None, None
    from kiln.apps.support import build_support_package

    app_dir = work_dir / "support"
    _, app_report = build_support_package(recipe, classifier.path, app_dir)
    report(f"support app: {app_dir}")
    return app_dir, app_report


def _train(recipe: Recipe, fingerprint: str, work_dir: Path, report: Report) -> PackageOutcome:
    """Train into a folder keyed by the training inputs; resume an interrupted attempt there."""
    import kiln.train

    dumped = recipe.model_dump(mode="json")
    inputs = {
        "seed": recipe.seed,
        "data": dumped["data"],
        "model": dumped["model"],
        "train": {k: v for k, v in dumped["train"].items() if k not in _TRAIN_KEY_EXCLUDED},
        "data_fingerprint": fingerprint,
    }

    def make(folder: Path) -> dict[str, Any]:
        is_resumed = (folder / "checkpoints").is_dir()
        report(f"train: {'resuming in' if is_resumed else 'training into'} {folder}")
        in_folder = recipe.model_copy(update={"train": recipe.train.model_copy(update={"output_dir": str(folder)})})
        result = kiln.train.run(in_folder, resume=is_resumed)
        assert result.package_dir is not None
        return {"digest": _digest(result.package_dir)}

    return _package_stage(work_dir, "train", "package", inputs, make, report)


def _compress_step(recipe: Recipe, step: str, parent: PackageOutcome, work_dir: Path, report: Report) -> PackageOutcome:
    """Apply one compress step to ``parent`` in a folder keyed by the step, settings and parent."""
    import kiln.compress

    settings = recipe.compress.model_dump(mode="json")
    inputs = {
        "parent": parent.digest,
        "compress": {k: v for k, v in settings.items() if k not in _COMPRESS_KEY_EXCLUDED},
    }

    def make(folder: Path) -> dict[str, Any]:
        shutil.rmtree(folder, ignore_errors=True)
        report(f"{step}: compressing {parent.path} into {folder}")
        kiln.compress.run(parent.path, output_dir=folder, config=recipe.compress, steps=[step])
        return {"digest": _digest(folder / f"01-{step}")}

    return _package_stage(work_dir, step, f"01-{step}", inputs, make, report)


def _package_stage(
    work_dir: Path,
    step: str,
    package_name: str,
    inputs: dict[str, Any],
    make: Callable[[Path], dict[str, Any]],
    report: Report,
) -> PackageOutcome:
    """A stage that makes one package in its folder: reuse it while intact, else ``make`` it."""
    out = cache.reuse_or_make(
        work_dir,
        step,
        inputs,
        make,
        is_usable=lambda folder, record: cache.intact_package(folder / package_name, record["digest"]),
    )
    package = out.folder / package_name
    if out.is_reused:
        report(f"{step}: skipped, {package} already made from the same inputs and code")
    return PackageOutcome(step, package, out.record["digest"], skipped=(step,) if out.is_reused else ())


def _evaluate(recipe: Recipe, package: PackageOutcome, work_dir: Path, report: Report) -> PackageOutcome:
    """Test-split metrics and report of a package, through the runtime (latency is timed apart)."""
    import kiln.evaluate

    def make(folder: Path) -> dict[str, Any]:
        cfg = kiln.evaluate.EvaluationConfig(
            package=package.path,
            output_dir=folder,
            batch_size=recipe.eval.batch_size,
            ece_bins=recipe.eval.ece_bins,
        )
        result = kiln.evaluate.run(cfg)
        if result.report.get("task") == "recommendation":
            metrics = {k: result.report[k] for k in RANKING_METRICS}
            metrics["size_mb"] = sum(f.stat().st_size for f in package.path.rglob("*") if f.is_file()) / 1e6
        else:
            metrics = kiln.evaluate.quality_metrics(result.report)
        return {"package": str(package.path), "metrics": metrics}

    inputs = {"package": package.digest, "eval": recipe.eval.model_dump(mode="json")}
    out = cache.reuse_or_make(work_dir, "eval", inputs, make)
    metrics = out.record["metrics"]
    headline = headline_metric(metrics)
    if out.is_reused:
        report(f"evaluate {package.step}: skipped, {out.folder} already holds its test metrics")
    else:
        report(f"evaluate {package.step}: {headline} {metrics[headline]:.4f}")
    skipped = (*package.skipped, "evaluate") if out.is_reused else package.skipped
    return replace(package, metrics=metrics, eval_dir=out.folder, skipped=skipped)


def headline_metric(metrics: dict[str, float]) -> str:
    """The metric a package's task is judged by first: accuracy, ndcg@10 or perplexity."""
    for name in ("ndcg@10", "perplexity"):
        if name in metrics:
            return name
    return "accuracy"


def _latency_timer(recipe: Recipe, sample_inputs: list[Any], report: Report) -> TimeLatency | None:
    """Times a package's batch-1 latency and size now; None when there is nothing to time on.

    Recommendation recipes have no sample inputs: their packages are judged on ranking alone.
    """
    if not sample_inputs:
        return None
    import kiln.evaluate

    def time_latency(path: Path, label: str) -> dict[str, float]:
        timed = kiln.evaluate.time_package(
            path, sample_inputs, num_threads=recipe.eval.num_threads, latency_runs=recipe.eval.latency_runs
        )
        report(f"latency {label}: p99 {timed['p99_latency_ms']:.2f} ms (timed in this run)")
        return timed

    return time_latency


def _register(
    registry: Registry,
    recipe: Recipe,
    fingerprint: str,
    packages: list[PackageOutcome],
    report: Report,
) -> tuple[list[PackageOutcome], str | None]:
    """Register each package not yet registered, its parent being the package before it.

    One run records the resolved recipe, data fingerprint, code version, parameters and the
    training metric series; it is started only when some package is new.
    """
    from kiln.registry.recording import find_version, log_series, start_recipe_run

    run = None
    parent: str | None = None
    registered = []
    try:
        for package in packages:
            version = find_version(registry, recipe.name, package.path)
            is_new = version is None
            if version is None:
                if run is None:
                    run = start_recipe_run(registry, recipe.model_dump(mode="json"), data_fingerprint=fingerprint)
                    log_series(registry, run, packages[0].path.parent / "metrics.jsonl")
                version = registry.register(
                    package.path, name=recipe.name, run=run, parent=parent, metrics=package.metrics
                )
            report(f"register {package.step}: {version.ref}{'' if is_new else ' (already registered)'}")
            registered.append(replace(package, ref=version.ref, is_new_version=is_new))
            parent = version.ref
    except BaseException:
        if run is not None:
            registry.finish_run(run, status="failed")
        raise
    if run is not None:
        registry.finish_run(run)
    return registered, run.id if run is not None else None


def _timed(package: PackageOutcome, time_latency: TimeLatency | None) -> PackageOutcome:
    """The package with its latency and size timed in this run added to its metrics."""
    if time_latency is None:
        return package
    return replace(package, metrics={**package.metrics, **time_latency(package.path, package.step)})


def _promote(
    registry: Registry,
    recipe: Recipe,
    fingerprint: str,
    packages: list[PackageOutcome],
    time_latency: TimeLatency | None,
    report: Report,
) -> Decision | None:
    from kiln.pipeline.promote import promote

    if recipe.promote is None:
        return None
    candidates = [Candidate(p.step, p.ref, p.metrics, fingerprint) for p in packages]
    baseline = [c for c in candidates if c.step == recipe.promote.baseline][-1]  # the recipe names a step it makes
    decision = promote(registry, recipe.name, recipe.promote, candidates, baseline=baseline, time_latency=time_latency)
    report(f"promote: {decision.reason}")
    return decision


def _digest(package: Path) -> str:
    from kiln.runtime.package import package_digest, read_manifest

    return package_digest(read_manifest(package, verify=False))


def _clear_stage_outputs(work_dir: Path) -> None:
    for folder in work_dir.iterdir():
        if folder.is_dir() and cache.is_stage_dir(folder):
            shutil.rmtree(folder)
