"""Small statistics for the studies: paired differences over seeds with a 95 % t-interval."""

from __future__ import annotations

import math
import statistics

# two-sided 95 % quantiles of Student's t by degrees of freedom (used when scipy is not installed)
T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
]


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t
    except ImportError:
        if df > len(T975):
            raise ValueError(f"no t quantile for {df} degrees of freedom without scipy") from None
        return T975[df - 1]
    return float(t.ppf(0.975, df))


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b over the pairs and the half-width of its 95 % t-interval (nan for one pair)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return diffs[0], math.nan
    return statistics.fmean(diffs), t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
