"""Statistical building blocks for experiment reports.

Pure functions on counts and arrays, no knowledge of experiments, so each one can be checked
against a textbook example or an independent computation. scipy supplies the distributions and
the Welch test; what scipy does not have (Wilson, Newcombe, Holm, the clustered ratio variance,
the cluster bootstrap) is written out here in a few lines each.

Conventions: ``alpha`` is two-sided; intervals are ``(low, high)``; a quantity that cannot be
estimated from the data is ``None``, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "BootstrapQuantiles",
    "SrmResult",
    "WelchRatio",
    "cluster_bootstrap_quantiles",
    "holm_adjust",
    "relative_lift_interval",
    "ratio_estimate",
    "normal_diff_test",
    "newcombe_diff_interval",
    "srm_test",
    "two_proportion_ztest",
    "welch_log_ratio",
    "wilson_interval",
]


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    """Wilson score interval for one proportion.

    Chosen over the Wald interval because it stays inside [0, 1] and keeps close to nominal
    coverage at small n and at 0 or n successes, where Wald collapses to a point.

    Returns:
        ``(low, high)``, or ``None`` when ``n == 0``.
    """
    if n <= 0:
        return None
    z = _z(alpha)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes one bound is exactly 0 or 1; the formula only gets there up to
    # rounding, so set it, and clamp the rest against rounding noise.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def newcombe_diff_interval(
    x1: int, n1: int, x2: int, n2: int, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval (his method 10) for ``x1/n1 - x2/n2``.

    Combines the two Wilson intervals; unlike the Wald interval it is never degenerate at zero
    counts and it keeps near-nominal coverage for small samples, while matching Wald for large
    ones, so the report uses it at every sample size instead of switching methods.

    Returns:
        ``(low, high)``, or ``None`` when either ``n`` is 0.
    """
    w1 = wilson_interval(x1, n1, alpha)
    w2 = wilson_interval(x2, n2, alpha)
    if w1 is None or w2 is None:
        return None
    p1, p2 = x1 / n1, x2 / n2
    (l1, u1), (l2, u2) = w1, w2
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return low, high


def two_proportion_ztest(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test of ``p1 == p2``.

    When the pooled proportion is 0 or 1 both arms are identical (no events, or all events)
    and the p-value is 1.

    Returns:
        The p-value, or ``None`` when either ``n`` is 0.
    """
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0.0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return float(2.0 * stats.norm.sf(abs(z)))


def normal_diff_test(
    mean_t: float, var_t: float, mean_c: float, var_c: float, alpha: float = 0.05
) -> tuple[float, tuple[float, float] | None, float | None]:
    """Wald test and interval for ``mean_t - mean_c`` from two independent estimates.

    Args:
        var_t, var_c: Variances *of the estimates* (squared standard errors).

    Returns:
        ``(diff, (low, high), p_value)``; interval and p-value are ``None`` when the combined
        variance is zero (both estimates degenerate), where no test is meaningful.
    """
    diff = mean_t - mean_c
    se = math.sqrt(var_t + var_c)
    if not se > 0.0:
        return diff, None, None
    z = _z(alpha)
    return diff, (diff - z * se, diff + z * se), float(2.0 * stats.norm.sf(abs(diff) / se))


def relative_lift_interval(
    mean_t: float, var_t: float, mean_c: float, var_c: float, alpha: float = 0.05
) -> tuple[float | None, tuple[float, float] | None]:
    """Relative lift ``mean_t / mean_c - 1`` with a delta-method interval.

    ``Var(lift) ~= var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4`` (the variances are of the
    estimates, i.e. sigma**2 / n), as in gbstats.

    Returns:
        ``(lift, (low, high))``; both ``None`` when ``mean_c`` is 0. The interval is ``None``
        when either variance is 0 (e.g. a proportion of 0 or 1): the delta method would then
        give a zero-width interval that claims certainty the data do not have.
    """
    if mean_c == 0:
        return None, None
    lift = mean_t / mean_c - 1.0
    if var_t <= 0 or var_c <= 0:
        return lift, None
    var = var_t / mean_c**2 + mean_t**2 * var_c / mean_c**4
    half = _z(alpha) * math.sqrt(var)
    return lift, (lift - half, lift + half)


def ratio_estimate(numerators: np.ndarray, denominators: np.ndarray) -> tuple[float, float] | None:
    """Ratio ``sum(y) / sum(x)`` over clusters with its delta-method (cluster-robust) variance.

    Each cluster (device) contributes ``y_i`` successes out of ``x_i`` trials. Trials within a
    device are correlated (one device, one camera, one user), so the binomial variance
    ``R(1-R)/sum(x)`` would be too small. The delta method on the ratio of means gives
    ``Var(R) ~= n/(n-1) * sum((y_i - R x_i)**2) / sum(x_i)**2``.

    Returns:
        ``(ratio, variance_of_ratio)``, or ``None`` with fewer than 2 clusters or no trials.
    """
    y = np.asarray(numerators, dtype=float)
    x = np.asarray(denominators, dtype=float)
    n = len(x)
    total = x.sum()
    if n < 2 or total <= 0:
        return None
    ratio = y.sum() / total
    resid = y - ratio * x
    var = n / (n - 1) * float(np.dot(resid, resid)) / total**2
    return float(ratio), var


@dataclass(frozen=True)
class WelchRatio:
    """Comparison of two arms' per-device mean log latency."""

    ratio: float  # exp(mean_t - mean_c): ratio of geometric means, treatment / control
    ci: tuple[float, float]  # exp of the Welch interval for the difference of means
    p_value: float
    df: float


def welch_log_ratio(log_t: np.ndarray, log_c: np.ndarray, alpha: float = 0.05) -> WelchRatio | None:
    """Welch t-test between two arms' per-device log means, reported on the ratio scale.

    Returns:
        The result, or ``None`` with fewer than 2 devices in an arm or no variance at all.
    """
    log_t = np.asarray(log_t, dtype=float)
    log_c = np.asarray(log_c, dtype=float)
    if len(log_t) < 2 or len(log_c) < 2:
        return None
    res = stats.ttest_ind(log_t, log_c, equal_var=False)
    if not np.isfinite(res.pvalue):
        return None
    ci = res.confidence_interval(1.0 - alpha)
    diff = float(log_t.mean() - log_c.mean())
    return WelchRatio(
        ratio=math.exp(diff),
        ci=(math.exp(float(ci.low)), math.exp(float(ci.high))),
        p_value=float(res.pvalue),
        df=float(res.df),
    )


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; ``None`` entries are skipped and stay ``None``.

    Sort the m p-values ascending, multiply the k-th smallest (k from 0) by ``m - k``, carry the
    running maximum so the adjusted values keep the order of the raw ones, cap at 1. Rejecting
    where the adjusted value is below alpha controls the family-wise error rate at alpha.
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check; ``expected`` is ``None`` for arms left out of the test."""

    p_value: float | None
    statistic: float | None
    expected: list[float | None]
    tested: list[bool]


def srm_test(observed: Sequence[int], weights: Sequence[float], min_units: int = 8) -> SrmResult:
    """Chi-square goodness of fit of the assigned counts against the configured weights.

    Arms with fewer than ``min_units`` units or zero weight are left out (as GrowthBook does)
    and the remaining weights are renormalised; the caller reports what was left out.
    ``df = k - 1`` over the arms tested. Fewer than two arms tested: no test (``p_value None``).
    """
    tested = [o >= min_units and w > 0 for o, w in zip(observed, weights)]
    obs = np.array([o for o, t in zip(observed, tested) if t], dtype=float)
    wts = np.array([w for w, t in zip(weights, tested) if t], dtype=float)
    if len(obs) < 2:
        return SrmResult(None, None, [None] * len(observed), tested)
    exp = wts / wts.sum() * obs.sum()
    res = stats.chisquare(obs, exp)
    expected_iter = iter(exp.tolist())
    expected = [next(expected_iter) if t else None for t in tested]
    return SrmResult(float(res.pvalue), float(res.statistic), expected, tested)


@dataclass(frozen=True)
class BootstrapQuantiles:
    """Quantiles of pooled rows with device-level bootstrap replicates."""

    point: np.ndarray  # shape (len(qs),)
    replicates: np.ndarray | None  # shape (n_boot, len(qs)); None when not bootstrapped


def _weighted_quantiles(sorted_values: np.ndarray, cum_weights: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Inverted-CDF quantiles (numpy's ``method="inverted_cdf"``) of weighted sorted rows.

    ``cum_weights`` has shape (r, n_rows) — one row of cumulative integer weights per
    replicate; returns shape (r, len(qs)). The quantile is the smallest value whose cumulative
    share reaches q; the tolerance absorbs float error in ``q * total``.
    """
    total = cum_weights[:, -1:].astype(float)
    out = np.empty((cum_weights.shape[0], len(qs)))
    for j, q in enumerate(qs):
        target = q * total - 1e-9 * total
        idx = (cum_weights < target).sum(axis=1)
        out[:, j] = sorted_values[np.minimum(idx, len(sorted_values) - 1)]
    return out


def cluster_bootstrap_quantiles(
    per_device: Sequence[np.ndarray],
    qs: Sequence[float],
    n_boot: int,
    rng: np.random.Generator,
    *,
    max_cells: int = 20_000_000,
) -> BootstrapQuantiles:
    """Quantiles of all rows pooled, with a bootstrap that resamples devices, not rows.

    Rows from one device are correlated, so resampling rows would understate the uncertainty.
    Each replicate draws ``len(per_device)`` device indices with replacement
    (``rng.integers(0, n_devices, size=(n_boot, n_devices))``, one call) and recomputes the pooled
    quantiles with every row of a drawn device counted once per draw. Done with integer
    weights on the rows sorted once, in chunks of at most ``max_cells`` cells of memory.

    Args:
        per_device: One array of positive values per device (each non-empty).
        qs: Quantile levels in (0, 1).
        n_boot: Number of replicates; 0 (or fewer than 2 devices) skips the bootstrap.
        rng: Source of randomness; pass a seeded generator for reproducible reports.
    """
    qs_arr = np.asarray(qs, dtype=float)
    lengths = np.array([len(d) for d in per_device])
    values = np.concatenate([np.asarray(d, dtype=float) for d in per_device])
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    device_of_row = np.repeat(np.arange(len(per_device)), lengths)[order]
    point = _weighted_quantiles(sorted_values, np.arange(1, len(values) + 1)[None, :], qs_arr)[0]
    n_dev = len(per_device)
    if n_boot <= 0 or n_dev < 2:
        return BootstrapQuantiles(point, None)
    draws = rng.integers(0, n_dev, size=(n_boot, n_dev))
    offsets = (np.arange(n_boot) * n_dev)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_dev).reshape(n_boot, n_dev)
    replicates = np.empty((n_boot, len(qs_arr)))
    chunk = max(1, max_cells // max(1, len(values)))
    for start in range(0, n_boot, chunk):
        weights = counts[start : start + chunk][:, device_of_row]
        replicates[start : start + chunk] = _weighted_quantiles(
            sorted_values, np.cumsum(weights, axis=1), qs_arr
        )
    return BootstrapQuantiles(point, replicates)
