"""Mean and 95% confidence interval across seeds (Student's t: seeds are few, the variance is estimated)."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% critical values t(0.975, df); beyond the table the next smaller tabulated df is used, which
# errs on the wide (conservative) side.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
         19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052,
         28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a confidence interval needs at least 2 samples")
    if df in _T975:
        return _T975[df]
    return _T975[max(k for k in _T975 if k <= df)]


def mean_ci(xs: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% CI, n); the half-width is nan for a single sample."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, 1
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, t975(n - 1) * sd / math.sqrt(n), n
