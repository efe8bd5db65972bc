"""One window of logged inputs compared with the reference: drift, confidence, latency, accuracy;
for a generation version, its latest requests against its reference window."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.monitor.drift import ColumnDrift, categorical_drift, histogram_drift, numeric_drift
from kiln.monitor.generation import LoggedGeneration
from kiln.monitor.predlog import LoggedInput
from kiln.runtime import Predictor
from kiln.runtime.features import numeric_features, pixel_counts
from kiln.runtime.profile import projection_of


@dataclass(frozen=True)
class WindowReport:
    """What a window of one model version looks like next to its reference."""

    model: str
    version: int
    rows: int
    columns: list[ColumnDrift]  # one per statistic, empty without a reference profile
    values: dict[str, float] = field(default_factory=dict)  # what alert rules read

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the API, the CLI and the dashboard."""
        return {
            "model": self.model,
            "version": self.version,
            "rows": self.rows,
            "values": self.values,
            "columns": [
                {
                    "column": c.column,
                    "kind": c.kind,
                    "method": c.method,
                    "score": c.score,
                    "threshold": c.threshold,
                    "is_drifted": c.is_drifted,
                    "stats": c.stats,
                }
                for c in self.columns
            ],
        }


def evaluate_window(
    rows: list[LoggedInput],
    *,
    model: str,
    version: int,
    profile: dict[str, Any] | None,
    predictor: Predictor | None,
    true_label: Callable[[str, int], str | None] = lambda _r, _i: None,
    embed_rows: int = 100,
) -> WindowReport:
    """Compare a window with the reference profile and measure its traffic and accuracy."""
    values = _traffic_values(rows)
    columns: list[ColumnDrift] = []
    if profile is not None and rows:
        columns = _drift_columns(rows, profile, predictor, embed_rows)
        for col in columns:
            for stat, value in col.stats.items():
                values[f"{stat}({col.column})"] = value
            values[f"drifted({col.column})"] = float(col.is_drifted)
            values[f"drift_score({col.column})"] = col.score
        emb = [c for c in columns if c.column.startswith("emb_")]
        if emb:
            share = sum(c.is_drifted for c in emb) / len(emb)
            values["drift_score(embedding)"] = share
            values["drifted(embedding)"] = float(share >= 0.5)
        if columns:
            values["drift_share"] = sum(c.is_drifted for c in columns) / len(columns)
        ref_conf = profile["numeric"].get("confidence", {}).get("mean")
        if ref_conf is not None and "mean_confidence" in values:
            values["confidence_drop"] = float(ref_conf) - values["mean_confidence"]
    labelled = [(r, true_label(r.request_id, r.index)) for r in rows]
    labelled = [(r, t) for r, t in labelled if t is not None]
    if labelled:
        values["accuracy"] = sum(r.label == t for r, t in labelled) / len(labelled)
        values["feedback_rows"] = float(len(labelled))
    return WindowReport(model=model, version=version, rows=len(rows), columns=columns, values=values)


def evaluate_generation_window(
    reference: list[LoggedGeneration],
    current: list[LoggedGeneration],
    *,
    model: str,
    version: int,
    reference_rows: int,
    min_rows: int,
) -> WindowReport:
    """Traffic of a generation version's latest rows and, once its reference window is full and
    ``min_rows`` rows followed it, drift of prompt length, output length, TTFT and latency."""
    latest = current or reference
    values = _generation_values(latest)
    columns: list[ColumnDrift] = []
    if len(reference) >= reference_rows and len(current) >= min_rows:
        for name, stat in _GENERATION_FEATURES.items():
            ref = [v for v in map(stat, reference) if v is not None]
            cur = [v for v in map(stat, current) if v is not None]
            if len(ref) >= 2 and len(cur) >= 2:
                columns.append(numeric_drift(name, ref, cur))
        for col in columns:
            for stat_name, value in col.stats.items():
                values[f"{stat_name}({col.column})"] = value
            values[f"drifted({col.column})"] = float(col.is_drifted)
            values[f"drift_score({col.column})"] = col.score
        if columns:
            values["drift_share"] = sum(c.is_drifted for c in columns) / len(columns)
    return WindowReport(model=model, version=version, rows=len(latest), columns=columns, values=values)


_GENERATION_FEATURES: dict[str, Callable[[LoggedGeneration], float | None]] = {
    "prompt_tokens": lambda r: float(r.prompt_tokens),
    "output_tokens": lambda r: float(r.output_tokens),
    "ttft": lambda r: r.ttft_s,
    "latency": lambda r: r.latency_s,
}


def _generation_values(rows: list[LoggedGeneration]) -> dict[str, float]:
    if not rows:
        return {"rows": 0.0}
    latencies = np.asarray([r.latency_s for r in rows])
    span = max(rows[-1].timestamp - rows[0].timestamp, 1e-3)
    p50, p95, p99 = np.quantile(latencies, [0.5, 0.95, 0.99])
    values = {
        "rows": float(len(rows)),
        "p50_latency": float(p50),
        "p95_latency": float(p95),
        "p99_latency": float(p99),
        "qps": len(rows) / span if len(rows) > 1 else 0.0,
        "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in rows])),
        "mean_output_tokens": float(np.mean([r.output_tokens for r in rows])),
    }
    ttfts = [r.ttft_s for r in rows if r.ttft_s is not None]
    if ttfts:
        t50, t95, t99 = np.quantile(np.asarray(ttfts), [0.5, 0.95, 0.99])
        values.update(p50_ttft=float(t50), p95_ttft=float(t95), p99_ttft=float(t99))
    return values


def _traffic_values(rows: list[LoggedInput]) -> dict[str, float]:
    if not rows:
        return {"rows": 0.0}
    latencies = np.asarray([r.latency_s for r in rows])
    span = max(rows[-1].timestamp - rows[0].timestamp, 1e-3)
    requests = len({r.request_id or id(r) for r in rows})
    p50, p95, p99 = np.quantile(latencies, [0.5, 0.95, 0.99])
    return {
        "rows": float(len(rows)),
        "p50_latency": float(p50),
        "p95_latency": float(p95),
        "p99_latency": float(p99),
        "qps": requests / span if len(rows) > 1 else 0.0,
        "mean_confidence": float(np.mean([r.confidence for r in rows])),
    }


def _drift_columns(
    rows: list[LoggedInput], profile: dict[str, Any], predictor: Predictor | None, embed_rows: int
) -> list[ColumnDrift]:
    columns: list[ColumnDrift] = []
    reference = profile["numeric"]
    live: dict[str, np.ndarray] = {"confidence": np.asarray([r.confidence for r in rows])}
    if predictor is not None:
        inputs = [r.input for r in rows]
        live.update(numeric_features(predictor, inputs, None))
        projection = projection_of(profile)
        if projection is not None and embed_rows > 0:
            sample = inputs[-embed_rows:]
            from kiln.runtime.features import embeddings_of

            emb = embeddings_of(predictor, sample)
            if emb is not None:
                projected = projection.apply(emb)
                for i in range(projected.shape[1]):
                    live[f"emb_{i}"] = projected[:, i]
        pixels = pixel_counts(predictor, inputs)
        if pixels is not None and "pixel_intensity" in profile["categorical"]:
            current = {str(i): int(c) for i, c in enumerate(pixels)}
            columns.append(histogram_drift("pixel_intensity", profile["categorical"]["pixel_intensity"], current))
    for name, values in live.items():
        if name in reference and len(values) and reference[name]["sample"]:
            columns.append(numeric_drift(name, reference[name]["sample"], values))
    predicted: dict[str, int] = {}
    for r in rows:
        predicted[r.label] = predicted.get(r.label, 0) + 1
    columns.append(categorical_drift("prediction", profile["categorical"]["prediction"], predicted))
    return columns
