"""``kiln run``: the stages of a recipe in order, each talking to the next through the package.

data -> train (writes the package) -> evaluate (through the runtime, on the test split), and for
a recipe with a ``support`` section, the customer-service app package built on the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config.schema import Recipe


@dataclass(frozen=True)
class PipelineResult:
    """The trained package and its evaluation report."""

    package_dir: Path
    report: dict[str, Any]
    eval_dir: Path
    app_dir: Path | None = None  # the application package (support), when the recipe makes one


def run_pipeline(recipe: Recipe, *, resume: bool = False) -> PipelineResult:
    """Train the recipe's model, then evaluate the package on the test split."""
    import kiln.evaluate
    import kiln.train

    trained = kiln.train.run(recipe, resume=resume)
    assert trained.package_dir is not None
    evaluated = kiln.evaluate.run(
        kiln.evaluate.EvaluationConfig(
            package=trained.package_dir,
            output_dir=trained.run_dir / "eval",
            batch_size=recipe.eval.batch_size,
            ece_bins=recipe.eval.ece_bins,
        )
    )
    if recipe.support is None:
        return PipelineResult(trained.package_dir, evaluated.report, evaluated.output_dir)
    from kiln.apps.support import build_support_package

    app_dir = trained.run_dir / "support"
    _, support = build_support_package(recipe, trained.package_dir, app_dir)
    report = dict(evaluated.report, support=support)
    return PipelineResult(trained.package_dir, report, evaluated.output_dir, app_dir=app_dir)
