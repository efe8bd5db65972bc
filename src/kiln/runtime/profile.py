"""The reference profile: what the validation split looked like to the model at training time.

Written into the package as ``reference_profile.json`` (and listed in the manifest) so that
monitoring compares live traffic with the data the model was chosen on, without the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.runtime.features import Projection, embeddings_of, fit_projection, numeric_features, pixel_counts
from kiln.runtime.predictor import Predictor

PROFILE_NAME = "reference_profile.json"
PROFILE_SCHEMA = 1
MAX_SAMPLE_ROWS = 1000  # reference values kept per statistic (a seeded subsample beyond)
PROJECTION_DIMS = 8  # PCA components kept of the pooled embedding


def build_profile(predictor: Predictor, inputs: Sequence[Any], *, seed: int = 0) -> dict[str, Any]:
    """Profile ``inputs`` (the validation split) as the package's predictor sees them."""
    rng = np.random.default_rng(seed)
    if len(inputs) > MAX_SAMPLE_ROWS:
        keep = np.sort(rng.choice(len(inputs), MAX_SAMPLE_ROWS, replace=False))
        inputs = [inputs[i] for i in keep]
    inputs = list(inputs)
    kind = predictor.manifest["preprocessing"]["kind"]
    projection: Projection | None = None
    if kind == "text" and len(inputs) >= 3:
        emb = embeddings_of(predictor, inputs)
        if emb is not None:
            projection = fit_projection(emb, PROJECTION_DIMS)
    numeric = numeric_features(predictor, inputs, projection)
    probs = np.concatenate([predictor.predict_proba(inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
    labels = predictor.labels
    predicted = [labels[int(i)] for i in probs.argmax(axis=1)]
    numeric["confidence"] = probs.max(axis=1)
    categorical: dict[str, dict[str, int]] = {"prediction": {lab: predicted.count(lab) for lab in labels}}
    pixels = pixel_counts(predictor, inputs)
    if pixels is not None:
        categorical["pixel_intensity"] = {str(i): int(c) for i, c in enumerate(pixels)}
    return {
        "schema": PROFILE_SCHEMA,
        "kind": kind,
        "rows": len(inputs),
        "labels": labels,
        "numeric": {name: _numeric_summary(values) for name, values in numeric.items()},
        "categorical": categorical,
        "projection": projection.to_json() if projection is not None else None,
    }


def write_reference_profile(package_dir: str | Path, inputs: Sequence[Any]) -> dict[str, Any]:
    """Profile ``inputs`` with the package's own predictor and add the profile to the package.

    The manifest gains ``reference_profile`` and the file's sha256 in ``files``.
    """
    from kiln.checksums import sha256_file
    from kiln.runtime.package import MANIFEST_NAME, write_json_atomic
    from kiln.runtime.predictor import load_classifier

    folder = Path(package_dir)
    predictor = load_classifier(folder, device="cpu")
    profile = build_profile(predictor, inputs)
    path = folder / PROFILE_NAME
    path.write_text(json.dumps(profile) + "\n", encoding="utf-8")
    manifest = dict(predictor.manifest)  # read and verified by the load
    manifest["reference_profile"] = PROFILE_NAME
    manifest["files"] = dict(manifest["files"], **{PROFILE_NAME: sha256_file(path)})
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return profile


def read_profile(package_dir: str | Path) -> dict[str, Any] | None:
    """A package's reference profile, or None when it has none."""
    path = Path(package_dir) / PROFILE_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def projection_of(profile: dict[str, Any]) -> Projection | None:
    """The profile's embedding projection, if it has one."""
    raw = profile.get("projection")
    return Projection.from_json(raw) if raw else None


def _numeric_summary(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    return {
        "sample": values.round(6).tolist(),
        "mean": float(values.mean()) if len(values) else 0.0,
        "std": float(values.std()) if len(values) else 0.0,
        "quantiles": np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95]).round(6).tolist() if len(values) else [],
    }
