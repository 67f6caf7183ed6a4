"""Small statistics for the studies: paired differences over seeds with a 95 % t-interval, and the seeds a
paired comparison needs. Student's t is computed exactly for integer degrees of freedom (Abramowitz and
Stegun 26.7.3-4), so nothing beyond the standard library is needed."""

from __future__ import annotations

import math
import statistics


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` >= 1 degrees of freedom: with theta = atan(t / sqrt(df)) and
    c = cos(theta)^2, P(|T| < t) is 2/pi (theta + sin(theta) cos(theta) (1 + 2/3 c + 2*4/(3*5) c^2 + ...))
    for odd df and sin(theta) (1 + 1/2 c + 1*3/(2*4) c^2 + ...) for even df, sums of (df - 1) // 2 and df // 2
    terms."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(t / math.sqrt(df))
    c, total, term = math.cos(theta) ** 2, 1.0, 1.0
    odd = df % 2 == 1
    for k in range(1, (df - 1) // 2 if odd else df // 2):
        term *= c * ((2 * k) / (2 * k + 1) if odd else (2 * k - 1) / (2 * k))
        total += term
    if odd:
        inside = (2 / math.pi) * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    else:
        inside = math.sin(theta) * total
    return 0.5 * (1.0 + inside)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0 < p < 1) of Student's t with ``df`` degrees of freedom (bisection on
    ``t_cdf`` to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a two-sided 95 % interval's)."""
    return t_quantile(0.975, df)


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b over the pairs and the half-width of its 95 % t-interval (nan for one pair)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return diffs[0], math.nan
    return statistics.fmean(diffs), t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def seeds_needed(spread: float, effect: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Paired seeds for a two-sided paired t-test at level ``alpha`` to find a true mean difference of
    ``effect`` with probability ``power``, when the paired differences have standard deviation ``spread``
    (same units as ``effect``): the smallest n >= 2 with

        n >= ((t(1 - alpha/2, n - 1) + t(power, n - 1)) * spread / effect)^2,

    the usual t-approximation of the noncentral-t power (for spread 1, effect 0.5: 34, as R's
    ``power.t.test(delta=0.5, sd=1, type="paired")`` gives n = 33.4)."""
    if not (effect > 0 and math.isfinite(effect)) or not (spread >= 0 and math.isfinite(spread)):
        raise ValueError(f"seeds_needed needs an effect > 0 and a finite spread >= 0, got {effect}, {spread}")
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must lie in (0, 1), got {power}, {alpha}")
    z = statistics.NormalDist()
    n = max(2, math.ceil(((z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * spread / effect) ** 2))
    while n < ((t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * spread / effect) ** 2:
        n += 1
    return n
