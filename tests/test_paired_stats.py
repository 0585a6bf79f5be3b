"""The decision rule of the report and the evidence tables: Student-t quantiles and paired intervals,
checked against scipy and against printed t tables."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from kdforge.recipes.stats import format_interval, paired_difference, t_quantile, t_two_sided_probability

#: t_0.975 from printed tables (two-sided 95 %), by degrees of freedom
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 7: 2.365, 9: 2.262, 10: 2.228, 20: 2.086,
           30: 2.042}


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 8, 9, 11, 30, 120])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 7.0])
def test_two_sided_probability_matches_scipy(df, t):
    assert t_two_sided_probability(t, df) == pytest.approx(1 - 2 * stats.t.sf(t, df), abs=1e-12)


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_quantile_matches_printed_table_and_scipy(df):
    assert t_quantile(0.95, df) == pytest.approx(T_TABLE[df], abs=6e-4)
    assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-8)
    assert t_quantile(0.99, df) == pytest.approx(stats.t.ppf(0.995, df), rel=1e-8)


def test_quantile_tends_to_normal():
    assert t_quantile(0.95, 100000) == pytest.approx(1.959964, abs=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        t_two_sided_probability(1.0, 0)
    with pytest.raises(ValueError, match="confidence"):
        t_quantile(1.0, 3)


def test_paired_difference_against_a_direct_computation():
    a = {0: 85.25, 1: 85.51, 2: 83.98, 3: 85.0, 7: 99.0}  # seed 7 has no partner: left out
    b = {2: 84.40, 0: 84.50, 1: 84.44, 3: 84.1}
    result = paired_difference(a, b)
    diffs = [85.25 - 84.50, 85.51 - 84.44, 83.98 - 84.40, 85.0 - 84.1]
    mean, std = stats.tmean(diffs), stats.tstd(diffs)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=mean, scale=stats.sem(diffs))
    assert result["n"] == 4 and sorted(result["seeds"]) == [0, 1, 2, 3]
    assert result["mean"] == pytest.approx(mean) and result["std"] == pytest.approx(std)
    assert (result["low"], result["high"]) == pytest.approx((low, high), rel=1e-7)
    assert low < 0 < high and result["verdict"] == "not resolved"
    assert format_interval(result) == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def test_verdicts():
    base = {s: 80.0 for s in range(5)}
    assert paired_difference({s: 80.5 + 0.1 * s for s in range(5)}, base)["verdict"] == "higher"
    assert paired_difference({s: 79.5 - 0.1 * s for s in range(5)}, base)["verdict"] == "lower"
    # higher on every seed, but spread so wide the interval holds 0 at 2 seeds
    assert paired_difference({0: 80.1, 1: 83.0}, {0: 80.0, 1: 80.0})["verdict"] == "not resolved"
    one = paired_difference({0: 81.0}, {0: 80.0})
    assert one["verdict"] == "not resolved" and math.isnan(one["low"])
    assert format_interval(one) == "+1.00 (1 seed: no interval)"
    none = paired_difference({0: 81.0}, {1: 80.0})
    assert none["n"] == 0 and format_interval(none) == "—"
