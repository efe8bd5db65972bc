"""Drift of a window of live data against the reference profile, one statistic at a time.

The test per statistic follows Evidently's defaults: with a reference of at most 1,000 rows,
numeric statistics use the two-sample Kolmogorov–Smirnov test and categorical ones Pearson's
chi², drifting at p < 0.05; above 1,000 rows, the normed Wasserstein distance (numeric) and
the Jensen–Shannon distance (categorical), drifting at >= 0.1. PSI is computed for every
statistic as well, for rules such as ``psi(prediction) > 0.2``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SMALL_REFERENCE_ROWS = 1000  # at most this many reference rows: statistical tests, else distances
P_VALUE_THRESHOLD = 0.05  # KS / chi² drift when p is below
DISTANCE_THRESHOLD = 0.1  # Wasserstein (normed) / Jensen–Shannon drift at or above
PSI_BINS = 10  # quantile bins of the reference for PSI on numeric statistics
_EPS = 1e-4  # floor of a bin's share so PSI and logs stay finite


@dataclass(frozen=True)
class ColumnDrift:
    """How one statistic moved between the reference and the window."""

    column: str  # e.g. "length", "prediction", "emb_3"
    kind: str  # "numeric" or "categorical"
    method: str  # the deciding test: "ks", "chi2", "wasserstein", "jensen_shannon"
    score: float  # its value: a p-value for tests, a distance otherwise
    threshold: float  # drift when score < threshold (tests) or >= threshold (distances)
    is_drifted: bool  # the decision
    stats: dict[str, float]  # every statistic computed: psi, ks, ks_p, chi2_p, js, wasserstein


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    ref = np.clip(reference, _EPS, None)
    cur = np.clip(current, _EPS, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2, in 0..1) of two share vectors."""
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(reference, current, base=2))


def numeric_drift(
    column: str, reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray
) -> ColumnDrift:
    """Compare a numeric statistic's reference values with the window's values."""
    from scipy import stats

    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ks = stats.ks_2samp(ref, cur)
    scale = ref.std() or 1.0
    wasserstein = float(stats.wasserstein_distance(ref, cur) / scale)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1)))
    if len(edges) < 2:
        edges = np.array([ref.min() - 0.5, ref.max() + 0.5])
    ref_share, cur_share = _shares(ref, edges), _shares(cur, edges)
    values = {
        "psi": psi(ref_share, cur_share),
        "ks": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "wasserstein": wasserstein,
        "js": jensen_shannon(ref_share, cur_share),
    }
    if len(ref) <= SMALL_REFERENCE_ROWS:
        return ColumnDrift(
            column, "numeric", "ks", values["ks_p"], P_VALUE_THRESHOLD, values["ks_p"] < P_VALUE_THRESHOLD, values
        )
    return ColumnDrift(
        column, "numeric", "wasserstein", wasserstein, DISTANCE_THRESHOLD, wasserstein >= DISTANCE_THRESHOLD, values
    )


def categorical_drift(column: str, reference: Mapping[str, int], current: Mapping[str, int]) -> ColumnDrift:
    """Compare category counts of the reference with those of the window."""
    from scipy import stats

    keys = sorted(set(reference) | set(current))
    ref = np.asarray([reference.get(k, 0) for k in keys], dtype=np.float64)
    cur = np.asarray([current.get(k, 0) for k in keys], dtype=np.float64)
    ref_share, cur_share = ref / max(ref.sum(), 1.0), cur / max(cur.sum(), 1.0)
    # Chi² of the window's counts against the counts the reference shares predict.
    expected = np.clip(ref_share, _EPS, None)
    expected = expected / expected.sum() * cur.sum()
    chi2_p = float(stats.chisquare(cur, expected).pvalue) if len(keys) > 1 and cur.sum() > 0 else 1.0
    values = {
        "psi": psi(ref_share, cur_share),
        "chi2_p": chi2_p,
        "js": jensen_shannon(ref_share, cur_share) if cur.sum() > 0 else 0.0,
    }
    if ref.sum() <= SMALL_REFERENCE_ROWS:
        return ColumnDrift(column, "categorical", "chi2", chi2_p, P_VALUE_THRESHOLD, chi2_p < P_VALUE_THRESHOLD, values)
    js = values["js"]
    return ColumnDrift(
        column, "categorical", "jensen_shannon", js, DISTANCE_THRESHOLD, js >= DISTANCE_THRESHOLD, values
    )


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    inner = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(inner, bins=edges)
    return counts / max(counts.sum(), 1)
