"""Drift statistics between a reference distribution and a live one. Pure functions.

- `psi`: Population Stability Index over the same bins, sum of (a - e) * ln(a / e), with
  additive epsilon smoothing so that an empty bin on either side gives a large but
  finite value. PSI is symmetric and >= 0 (it is KL(a||e) + KL(e||a)).
- `ks_from_counts`: the two-sample Kolmogorov-Smirnov statistic of two binned samples,
  max |CDF_a - CDF_b| over the bin edges; it can only be lower than the statistic of the
  unbinned samples (`ks_samples`), as the CDFs are compared at fewer points.
- `js_divergence`: Jensen-Shannon divergence, in [0, 1] with base 2 (in [0, ln 2] with
  base e); for categorical distributions such as token frequencies.
- `psi_noise_floor`, `ks_critical_value`: what the two statistics reach by sampling
  alone, for samples of given sizes from one distribution. A fixed threshold (PSI 0.2)
  is below that floor for small samples (a reference profile of a few dozen holdout
  rows), where it would call noise drift.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
DEFAULT_EPSILON = 1e-4


def _distribution(values: ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """Counts or fractions as fractions summing to 1 (all zeros stays all zeros)."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    total = array.sum()
    return array / total if total > 0 else array


def _same_bins(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> None:
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"distributions need the same non-zero number of bins: {a.size}, {b.size}")


def psi(expected: ArrayLike, actual: ArrayLike, epsilon: float = DEFAULT_EPSILON) -> float:
    """PSI of `actual` against `expected` (counts or fractions over the same bins)."""
    if not epsilon > 0:
        raise ValueError("epsilon must be > 0")
    e = _distribution(expected, "expected")
    a = _distribution(actual, "actual")
    _same_bins(e, a)
    bins = e.size
    e = (e + epsilon) / (e.sum() + bins * epsilon)
    a = (a + epsilon) / (a.sum() + bins * epsilon)
    # Each term (a - e) * ln(a / e) is >= 0; the clip only removes -0.0 rounding.
    return float(max(0.0, np.sum((a - e) * np.log(a / e))))


def ks_from_counts(reference: ArrayLike, current: ArrayLike) -> float:
    """KS statistic of two histograms over the same (ordered) bins, in [0, 1]."""
    r = _distribution(reference, "reference")
    c = _distribution(current, "current")
    _same_bins(r, c)
    if r.sum() == 0 or c.sum() == 0:
        raise ValueError("both histograms need at least one value")
    return float(min(1.0, np.max(np.abs(np.cumsum(r) - np.cumsum(c)))))


def ks_samples(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sample KS statistic sup_x |F_a(x) - F_b(x)| of raw samples, in [0, 1]."""
    xa = np.sort(np.asarray(a, dtype=np.float64).reshape(-1))
    xb = np.sort(np.asarray(b, dtype=np.float64).reshape(-1))
    if xa.size == 0 or xb.size == 0 or np.isnan(xa).any() or np.isnan(xb).any():
        raise ValueError("both samples need at least one value and no NaN")
    points = np.concatenate([xa, xb])
    # Empirical CDFs right after each observed value: the supremum is reached there.
    cdf_a = np.searchsorted(xa, points, side="right") / xa.size
    cdf_b = np.searchsorted(xb, points, side="right") / xb.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def js_divergence(p: ArrayLike, q: ArrayLike, base: float = 2.0) -> float:
    """Jensen-Shannon divergence of two distributions over the same categories."""
    if not base > 1:
        raise ValueError("base must be > 1")
    pp = _distribution(p, "p")
    qq = _distribution(q, "q")
    _same_bins(pp, qq)
    if pp.sum() == 0 or qq.sum() == 0:
        raise ValueError("both distributions need some mass")
    m = 0.5 * (pp + qq)

    def kl_to_m(x: npt.NDArray[np.float64]) -> float:
        nonzero = x > 0  # 0 * log 0 = 0; m > 0 wherever x > 0
        return float(np.sum(x[nonzero] * np.log(x[nonzero] / m[nonzero])))

    divergence = 0.5 * (kl_to_m(pp) + kl_to_m(qq)) / math.log(base)
    return float(min(max(divergence, 0.0), math.log(2) / math.log(base)))


def psi_noise_floor(
    reference: ArrayLike,
    current: ArrayLike,
    n_reference: int,
    confidence: float = 0.99,
    draws: int = 500,
    epsilon: float = DEFAULT_EPSILON,
    seed: int = 0,
) -> float:
    """The PSI that two samples of these sizes (`n_reference`, and the `current` counts'
    total) from one distribution stay under with probability `confidence`: the quantile
    of PSI over `draws` pairs of samples from the pooled distribution (a parametric
    bootstrap; chi-square approximations fail for the sparse bins of small samples, where
    the epsilon smoothing dominates). 0 when not computable. Seeded: the same input gives
    the same floor."""
    ref = _distribution(reference, "reference")
    cur = np.asarray(current, dtype=np.float64).reshape(-1)
    m = int(cur.sum())
    if n_reference <= 0 or m <= 0 or ref.size < 2 or not 0 < confidence < 1:
        return 0.0
    pooled = ref * n_reference + cur
    pooled /= pooled.sum()
    rng = np.random.default_rng(seed)
    e = rng.multinomial(n_reference, pooled, size=draws).astype(np.float64)
    a = rng.multinomial(m, pooled, size=draws).astype(np.float64)
    bins = ref.size
    e = (e / n_reference + epsilon) / (1 + bins * epsilon)
    a = (a / m + epsilon) / (1 + bins * epsilon)
    values = np.sum((a - e) * np.log(a / e), axis=1)
    return float(np.quantile(values, confidence))


def ks_critical_value(n_reference: int, n_current: int, confidence: float = 0.99) -> float:
    """The two-sample Kolmogorov-Smirnov statistic that samples of these sizes from the
    same distribution stay under with probability `confidence` (the asymptotic
    c(alpha) * sqrt((n + m) / (n * m))). 0 when not computable."""
    if n_reference <= 0 or n_current <= 0 or not 0 < confidence < 1:
        return 0.0
    c = math.sqrt(-0.5 * math.log((1 - confidence) / 2))
    return c * math.sqrt((n_reference + n_current) / (n_reference * n_current))
