"""Small-sample statistics for multi-seed comparisons, on ``scipy.stats``.

With 3–10 seeds the normal approximation understates uncertainty badly (z = 1.96 vs t = 2.78 at
n = 5), so intervals use Student's t (``scipy.stats.t``) and paired differences the paired t-test
(``scipy.stats.ttest_rel``). SciPy comes with scikit-learn, which kdlab already needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple


def _scipy_stats():
    """``scipy.stats``, imported on first use: its import is slow, and every CLI command would pay it."""
    import scipy.stats  # optional: scipy

    return scipy.stats



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
    half = float(_scipy_stats().t.ppf(0.5 + level / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half, level)


def prediction_interval(values: Sequence[float], level: float = 0.95) -> Optional[Tuple[float, float]]:
    """Where one more run falls with probability ``level``: ``mean ± t · s · √(1 + 1/n)`` (Student's
    t, n − 1 degrees of freedom); None below 2 values. The yardstick for one published run."""
    s = summarize(values, level)
    if s.n < 2:
        return None
    half = float(_scipy_stats().t.ppf(0.5 + level / 2.0, s.n - 1)) * s.std * math.sqrt(1.0 + 1.0 / s.n)
    return (s.mean - half, s.mean + half)


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
    test = _scipy_stats().ttest_rel([float(x) for x in a], [float(y) for y in b])
    return PairedComparison(d, float(test.statistic), float(test.pvalue))


def epochs_to_reach(accuracies: Sequence[float], target: float) -> Optional[int]:
    """First (1-based) epoch whose accuracy is ≥ ``target``; None if never reached."""
    for i, acc in enumerate(accuracies, 1):
        if acc >= target:
            return i
    return None
