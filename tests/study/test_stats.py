import math

import pytest

from kdlab.study.stats import betainc, epochs_to_reach, paired, summarize, t_cdf, t_ppf

import scipy.special as scipy_special  # dev extra: an independent reference implementation
import scipy.stats as scipy_stats


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 200])
@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df, q):
    assert t_ppf(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 0.7, 2.5, 12.0])
def test_t_cdf_and_betainc_match_scipy(t):
    for df in (1, 4, 10):
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 5.0, 0.9), (10.0, 0.5, 0.97)]:
        assert betainc(a, b, x) == pytest.approx(scipy_special.betainc(a, b, x), abs=1e-12)


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
