"""eakd.stats: Student's t computed exactly (checked against published quantiles) and the seeds a paired
comparison needs (checked against R's power.t.test)."""

import math

import pytest

from eakd.stats import paired_interval, seeds_needed, t975, t_cdf, t_quantile

# two-sided 95 % quantiles of Student's t (any statistics table), df 1..15, then 19, 30 and 100
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145]
T975 += [2.131]
LATER = {19: 2.093, 30: 2.042, 100: 1.984}


def test_t_quantiles_match_the_tables():
    for df, want in [*enumerate(T975, 1), *LATER.items()]:
        assert round(t975(df), 3) == want
    assert round(t_quantile(0.8, 9), 4) == 0.8834 and round(t_quantile(0.9, 3), 4) == 1.6377
    assert t_quantile(0.1, 3) == pytest.approx(-1.6377, abs=1e-4)
    assert t_cdf(0.0, 7) == 0.5 and t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 2 / (2 * math.sqrt(6)))  # df 2: 1/2 + t / (2 sqrt(2 + t^2))


def test_paired_interval_is_the_t_interval_of_the_differences():
    mean, half = paired_interval([2.0, 3.0, 5.0], [1.0, 1.0, 2.0])  # diffs 1, 2, 3: sd 1
    assert mean == 2.0 and half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert math.isnan(paired_interval([1.0], [0.0])[1])


def test_seeds_needed_matches_power_t_test():
    """R: power.t.test(delta=0.5, sd=1, type="paired", power=0.8) n = 33.37; delta=1: n = 9.94."""
    assert seeds_needed(1.0, 0.5) == 34 and seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(2.0, 1.0) == 34  # only the ratio matters
    assert seeds_needed(0.0, 1.0) == 2
    with pytest.raises(ValueError, match="effect > 0"):
        seeds_needed(1.0, 0.0)
