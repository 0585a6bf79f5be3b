"""Small statistics for result tables."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1); std is 0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` (an integer >= 1) degrees of freedom, t >= 0.

    The closed forms for integer df (Abramowitz & Stegun 26.7.3 and 26.7.4), with theta = atan(t / sqrt(df)):
    odd df: (2 / pi) (theta + sin(theta) cos(theta) sum_k c_k cos^(2k)(theta)), c_0 = 1, c_k = c_(k-1) 2k / (2k + 1),
    k < (df - 1) / 2 (df = 1: 2 theta / pi); even df: sin(theta) sum_k d_k cos^(2k)(theta), d_0 = 1,
    d_k = d_(k-1) (2k - 1) / (2k), k < df / 2.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        total, term = 0.0, 1.0
        for k in range((df - 1) // 2):
            total += term
            term *= c2 * (2 * k + 2) / (2 * k + 3)
        return (2 / math.pi) * (theta + s * math.cos(theta) * total)
    total, term = 0.0, 1.0
    for k in range(df // 2):
        total += term
        term *= c2 * (2 * k + 1) / (2 * k + 2)
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The t such that P(|T| <= t) = `confidence` (two-sided) for Student's t with integer `df` >= 1: the
    multiplier of a `confidence` interval (0.95 -> 12.706 at df 1, 2.776 at df 4, 1.96 as df grows).
    Bisection on `t_two_sided_probability`, to 1e-10."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    low, high = 0.0, 1.0
    while t_two_sided_probability(high, df) < confidence:
        high *= 2
    while high - low > 1e-10 * max(1.0, high):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_probability(mid, df) < confidence else (low, mid)
    return (low + high) / 2


#: the verdicts of `paired_difference`
HIGHER, LOWER, UNRESOLVED = "higher", "lower", "not resolved"


def paired_difference(values: dict, baseline: dict, confidence: float = 0.95) -> dict:
    """The decision rule for "does A beat the baseline": over the seeds both have (dict seed -> value), the
    per-seed differences d = A - baseline; their mean, sample std, the `confidence` interval
    mean ± t_(n-1) std / sqrt(n) (Student's t on the paired differences), and the verdict: "higher" when the
    interval lies above 0, "lower" when below, "not resolved" otherwise (also with fewer than 2 shared seeds,
    where no interval exists). Returns {'n', 'seeds', 'diffs', 'mean', 'std', 'low', 'high', 'verdict'}."""
    seeds = [s for s in values if s in baseline]
    diffs = [float(values[s]) - float(baseline[s]) for s in seeds]
    mean, std = mean_std(diffs)
    low = high = math.nan
    verdict = UNRESOLVED
    if len(diffs) >= 2:
        half = t_quantile(confidence, len(diffs) - 1) * std / math.sqrt(len(diffs))
        low, high = mean - half, mean + half
        verdict = HIGHER if low > 0 else LOWER if high < 0 else UNRESOLVED
    return {"n": len(diffs), "seeds": seeds, "diffs": diffs, "mean": mean, "std": std, "low": low, "high": high,
            "verdict": verdict}


def format_interval(result: dict, digits: int = 2) -> str:
    """'+0.46 [−0.12, +1.04]' (the paired difference and its interval), or the mean alone without one."""
    if result["n"] == 0:
        return "—"
    if result["low"] != result["low"]:
        return f"{result['mean']:+.{digits}f} (1 seed: no interval)"
    return f"{result['mean']:+.{digits}f} [{result['low']:+.{digits}f}, {result['high']:+.{digits}f}]"
