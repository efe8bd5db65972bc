"""Drift of a window of live data against the reference profile, one statistic at a time.

Each kind of column has one deciding test, whatever the reference's size (the profile keeps a
sample of at most ``profile.MAX_SAMPLE_ROWS`` rows, so a two-sample test never sees more):

- numeric statistics (length, confidence, embedding projections): the two-sample
  Kolmogorov–Smirnov test, drifting at p < 0.05;
- counts of rows per category (the predicted label): Pearson's chi² test of the 2 x k table of
  reference and window counts, drifting at p < 0.05. Both sides are samples, so the test is
  two-sample (a goodness-of-fit test against the reference's shares, taken as exact, flags
  13% of same-distribution windows of 500 rows against 1,000 reference rows);
- histograms whose counts are not independent rows (pixel intensities: every pixel of an image
  is counted): the Jensen–Shannon distance of the shares, drifting at >= 0.1. A test on
  counts of pixels would read tiny changes as certain ones.

PSI and the Jensen–Shannon distance are computed for every column as well, and the KS statistic
and the normed Wasserstein distance for numeric ones, for rules such as ``psi(prediction) > 0.2``
or ``wasserstein(length) > 0.5``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

P_VALUE_THRESHOLD = 0.05  # KS / chi² drift when p is below
DISTANCE_THRESHOLD = 0.1  # Jensen–Shannon distance of histograms drifts at or above
PSI_BINS = 10  # quantile bins of the reference for PSI on numeric statistics
_EPS = 1e-4  # floor of a bin's share so PSI and logs stay finite


@dataclass(frozen=True)
class ColumnDrift:
    """How one statistic moved between the reference and the window."""

    column: str  # e.g. "length", "prediction", "emb_3"
    kind: str  # "numeric", "categorical" or "histogram"
    method: str  # the deciding test: "ks", "chi2" or "jensen_shannon"
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
    """Compare a numeric statistic's reference values with the window's values (KS decides)."""
    from scipy import stats

    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ks = stats.ks_2samp(ref, cur)
    scale = ref.std() or 1.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1)))
    if len(edges) < 2:
        edges = np.array([ref.min() - 0.5, ref.max() + 0.5])
    ref_share, cur_share = _shares(ref, edges), _shares(cur, edges)
    values = {
        "psi": psi(ref_share, cur_share),
        "ks": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "wasserstein": float(stats.wasserstein_distance(ref, cur) / scale),
        "js": jensen_shannon(ref_share, cur_share),
    }
    p = values["ks_p"]
    return ColumnDrift(column, "numeric", "ks", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD, values)


def categorical_drift(column: str, reference: Mapping[str, int], current: Mapping[str, int]) -> ColumnDrift:
    """Compare counts of rows per category in the reference and the window (chi² decides)."""
    from scipy import stats

    ref, cur, values = _count_stats(reference, current)
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]  # a category neither side saw has no expected count
    has_test = table.shape[1] > 1 and ref.sum() > 0 and cur.sum() > 0
    chi2_p = float(stats.chi2_contingency(table, correction=False).pvalue) if has_test else 1.0
    values["chi2_p"] = chi2_p
    return ColumnDrift(column, "categorical", "chi2", chi2_p, P_VALUE_THRESHOLD, chi2_p < P_VALUE_THRESHOLD, values)


def histogram_drift(column: str, reference: Mapping[str, int], current: Mapping[str, int]) -> ColumnDrift:
    """Compare histograms whose counts are not independent rows, e.g. pixels (Jensen–Shannon decides)."""
    _, _, values = _count_stats(reference, current)
    js = values["js"]
    return ColumnDrift(column, "histogram", "jensen_shannon", js, DISTANCE_THRESHOLD, js >= DISTANCE_THRESHOLD, values)


def _count_stats(
    reference: Mapping[str, int], current: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    keys = sorted(set(reference) | set(current))
    ref = np.asarray([reference.get(k, 0) for k in keys], dtype=np.float64)
    cur = np.asarray([current.get(k, 0) for k in keys], dtype=np.float64)
    ref_share, cur_share = ref / max(ref.sum(), 1.0), cur / max(cur.sum(), 1.0)
    values = {
        "psi": psi(ref_share, cur_share),
        "js": jensen_shannon(ref_share, cur_share) if cur.sum() > 0 and ref.sum() > 0 else 0.0,
    }
    return ref, cur, values


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    inner = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(inner, bins=edges)
    return counts / max(counts.sum(), 1)
