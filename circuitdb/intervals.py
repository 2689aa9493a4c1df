"""The mean of independent measurements and the half-width of its two-sided 95% interval (Student's t): seeds of
a sweep point, prompts of a set."""

from __future__ import annotations

import math
import statistics

_T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip
"""Student's t at 97.5% by degrees of freedom; between tabled values the next smaller one (a wider interval),
1.96 past 120."""


def t_975(degrees: int) -> float:
    if degrees > 120:
        return 1.96
    return _T_975[max(d for d in _T_975 if d <= degrees)]


def interval(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of the two-sided 95% interval) of independent measurements; 0 width for a single one,
    neither for none."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
