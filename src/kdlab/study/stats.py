"""Small-sample statistics for multi-seed comparisons, without a SciPy dependency.

With 3–10 seeds the normal approximation understates uncertainty badly (z = 1.96 vs t = 2.78 at
n = 5), so intervals use Student's t. Its quantile comes from the regularized incomplete beta
function (continued fraction, Numerical Recipes §6.4) and bisection; tests check it against SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (inverse of :func:`t_cdf`), by bisection to ~1e-12."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass
class Summary:
    """Mean, sample std (ddof = 1) and a two-sided t confidence interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2.0


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Summary of ``values``; with one value the std and interval are NaN (unknown, not zero)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = math.fsum(xs) / n
    if n < 2:
        return Summary(n, mean, float("nan"), float("nan"), float("nan"), level)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half, level)


@dataclass
class PairedComparison:
    """``a − b`` over matched seeds: the seed-to-seed variation both share cancels out."""

    diff: Summary
    t_stat: float
    p_value: float


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedComparison:
    """Paired t comparison of two equally long, seed-matched samples."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = summarize([x - y for x, y in zip(a, b)], level)
    if d.n < 2:
        return PairedComparison(d, float("nan"), float("nan"))
    if d.std == 0.0:
        t = 0.0 if d.mean == 0.0 else math.copysign(math.inf, d.mean)
        return PairedComparison(d, t, 1.0 if d.mean == 0.0 else 0.0)
    t = d.mean / (d.std / math.sqrt(d.n))
    return PairedComparison(d, t, 2.0 * (1.0 - t_cdf(abs(t), d.n - 1)))


def epochs_to_reach(accuracies: Sequence[float], target: float) -> Optional[int]:
    """First (1-based) epoch whose accuracy is ≥ ``target``; None if never reached."""
    for i, acc in enumerate(accuracies, 1):
        if acc >= target:
            return i
    return None
