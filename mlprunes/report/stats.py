"""Replicates summarised: mean, standard deviation, 95% confidence intervals of a difference
(paired by seed, or Welch's for independent groups), and curves interpolated onto a common grid.

Plain numbers in, plain numbers out: the answers and plots are built on these, and the tests
check them against values worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile(df: float) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + LEVEL / 2, df))


@dataclass(frozen=True)
class Difference:
    """A difference of means (a - b) with its 95% confidence interval; no interval from fewer
    than two replicates on a side (or pairs, when paired)."""
    value: float
    low: float | None
    high: float | None
    n: int                 # pairs, or the smaller group
    paired: bool

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    def significant(self) -> bool:
        """Does the interval leave out zero?"""
        return self.has_interval and (self.low > 0 or self.high < 0)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """a - b over pairs (a[i], b[i]): the mean of the differences, with the t interval of
    their mean."""
    if len(a) != len(b) or not a:
        raise ValueError("a paired difference needs two equally long, non-empty lists")
    diffs = [x - y for x, y in zip(a, b)]
    m, n = mean(diffs), len(diffs)
    if n < 2 or std(diffs) == 0:  # no spread to size an interval from
        return Difference(m, None, None, n, True)
    half = t_quantile(n - 1) * std(diffs) / math.sqrt(n)
    return Difference(m, m - half, m + half, n, True)


def welch_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """mean(a) - mean(b) of independent groups, with Welch's t interval (unequal variances,
    Welch-Satterthwaite degrees of freedom)."""
    if not a or not b:
        raise ValueError("a difference needs values on both sides")
    m = mean(a) - mean(b)
    n = min(len(a), len(b))
    if n < 2:
        return Difference(m, None, None, n, False)
    va, vb = std(a) ** 2 / len(a), std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:  # identical replicates on both sides: no spread to size an interval from
        return Difference(m, None, None, n, False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(df) * se
    return Difference(m, m - half, m + half, n, False)


def interpolate(points: Sequence[tuple[float, float]], x: float,
                log_x: bool = True) -> float | None:
    """The y of a piecewise-linear curve through `points` at `x` (linear in log x when
    `log_x`); None outside the curve's range: no extrapolation."""
    pts = sorted(points)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    f = math.log if log_x else (lambda v: v)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return (y0 + y1) / 2
            return y0 + (y1 - y0) * (f(x) - f(x0)) / (f(x1) - f(x0))
    return pts[0][1]  # a single point, at x


def common_grid(curves: Sequence[Sequence[tuple[float, float]]], points: int = 40,
                log_x: bool = True) -> list[float]:
    """`points` x values spread evenly (on a log scale) over the range every curve covers:
    where all replicates have a value, so the mean is of all of them."""
    if not curves or any(not c for c in curves):
        return []
    low = max(min(x for x, _ in c) for c in curves)
    high = min(max(x for x, _ in c) for c in curves)
    if low > high:
        return []
    if low == high or points < 2:
        return [low]
    if log_x:
        a, b = math.log(low), math.log(high)
        grid = [math.exp(a + (b - a) * i / (points - 1)) for i in range(points)]
        grid[0], grid[-1] = low, high  # exactly the ends, not exp(log(x)) of them
        return grid
    return [low + (high - low) * i / (points - 1) for i in range(points)]


@dataclass(frozen=True)
class Band:
    """Replicate curves on one grid: their mean and standard deviation at each x."""
    xs: list[float]
    means: list[float]
    stds: list[float]
    n: int


def mean_curve(curves: Sequence[Sequence[tuple[float, float]]], points: int = 40,
               log_x: bool = True) -> Band:
    grid = common_grid(curves, points, log_x)
    columns = [[interpolate(c, x, log_x) for c in curves] for x in grid]
    return Band(grid, [mean(col) for col in columns], [std(col) for col in columns],
                len(curves))
