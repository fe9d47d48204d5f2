import math

import pytest

from kdlab.study.stats import epochs_to_reach, paired, summarize

import scipy.stats as scipy_stats


def test_summary_by_hand():
    s = summarize([0.96, 0.97, 0.95, 0.98, 0.96])
    assert s.mean == pytest.approx(0.964)
    assert s.std == pytest.approx(math.sqrt(0.00052 / 4))  # Σ(x−x̄)² = 5.2e-4
    assert s.half_width == pytest.approx(2.7764451 * s.std / math.sqrt(5), rel=1e-6)  # t(0.975, 4)


def test_one_value_has_unknown_spread():
    s = summarize([0.9])
    assert s.mean == 0.9 and math.isnan(s.std) and math.isnan(s.ci_low)


def test_paired_cancels_shared_seed_effects():
    base = [0.90, 0.95, 0.85, 0.99, 0.92]
    better = [b + d for b, d in zip(base, [0.011, 0.009, 0.010, 0.012, 0.008])]
    p = paired(better, base)
    assert p.diff.mean == pytest.approx(0.01)
    assert p.diff.ci_low > 0  # unpaired intervals would overlap completely here
    ref = scipy_stats.ttest_rel(better, base)
    assert p.t_stat == pytest.approx(ref.statistic) and p.p_value == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError, match="length"):
        paired([1.0], [1.0, 2.0])


def test_epochs_to_reach():
    assert epochs_to_reach([0.5, 0.8, 0.9, 0.85], 0.8) == 2
    assert epochs_to_reach([0.5, 0.6], 0.9) is None
