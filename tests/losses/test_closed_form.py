import math

import pytest
import torch
import torch.nn.functional as F

from kdlab import ConfigError, kd_loss
from kdlab.losses.closed_form import ClosedFormObjective
from kdlab.methods import KD, Batch, Outputs


def reference(s, y, t, T, hw, sw):
    """Values and gradient of hw·CE + sw·hinton from autograd on the textbook formulas."""
    s = s.detach().clone().requires_grad_(True)
    hard = F.cross_entropy(s, y)
    if t is None:
        hard.backward()
        return hard.detach(), hard.detach(), None, s.grad
    soft = kd_loss(s, t, T)
    total = hw * hard + sw * soft
    total.backward()
    return total.detach(), hard.detach(), soft.detach(), s.grad


def kd_terms(method, s, y, t):
    """(total, hard, soft) of the KD method's autograd forward."""
    terms = method(Batch(s, y), Outputs(s), Outputs(t))
    return method.total(terms), terms["hard"], terms["soft"]


@pytest.mark.parametrize("T,hw,sw", [(1.0, 1.0, 0.0), (3.0, 0.5, 0.5), (7.0, 0.3, 0.7), (0.5, 0.0, 1.0), (20.0, 1.0, 2.0)])
def test_tabulated_values_and_gradient_equal_autograd(T, hw, sw):
    torch.manual_seed(0)
    N, K = 50, 10
    y, t = torch.randint(0, K, (N,)), 3 * torch.randn(N, K, dtype=torch.float64)
    fast = ClosedFormObjective(y, K, t)
    fast.prepare(T, hw, sw)
    for idx in (torch.arange(32), torch.tensor([49, 3, 3, 17])):  # a full and a short (last) batch
        s = 2 * torch.randn(len(idx), K, dtype=torch.float64)
        values, grad = fast(s, fast.rows(idx))
        total, hard, soft, ref_grad = reference(s, y[idx], t[idx], T, hw, sw)
        torch.testing.assert_close(values, torch.stack([total, hard, soft]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)


def test_gradient_matches_the_analytic_formula_of_the_issue():
    """∂total/∂s = hw·(softmax(s) − onehot)/B + sw·T·(softmax(s/T) − softmax(t/T))/B."""
    torch.manual_seed(1)
    B, K, T, hw, sw = 8, 5, 4.0, 0.3, 0.7
    y, t, s = torch.randint(0, K, (B,)), torch.randn(B, K, dtype=torch.float64), torch.randn(B, K, dtype=torch.float64)
    fast = ClosedFormObjective(y, K, t)
    fast.prepare(T, hw, sw)
    _, grad = fast(s, fast.rows(torch.arange(B)))
    expected = hw * (s.softmax(1) - F.one_hot(y, K)) / B + sw * T * ((s / T).softmax(1) - (t / T).softmax(1)) / B
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_rows_built_per_batch_equal_the_table():
    torch.manual_seed(2)
    y, t = torch.randint(0, 10, (40,)), torch.randn(40, 10)
    tabulated = ClosedFormObjective(y, 10, t)
    online = ClosedFormObjective(y, 10)
    for f in (tabulated, online):
        f.prepare(2.0, 0.5, 0.5)
    idx = torch.tensor([5, 1, 30])
    torch.testing.assert_close(online.rows_for(y[idx], t[idx]), tabulated.rows(idx))


def test_without_teacher_it_is_cross_entropy_and_soft_is_nan():
    torch.manual_seed(3)
    y = torch.randint(0, 10, (20,))
    fast = ClosedFormObjective(y, 10, distill=False)
    fast.prepare(4.0, 0.2, 0.8)  # weights are ignored without a teacher, as in the CE method
    s = torch.randn(20, 10, dtype=torch.float64)
    values, grad = fast(s, fast.rows(torch.arange(20)))
    total, hard, _, ref_grad = reference(s, y, None, 4.0, 0.2, 0.8)
    assert values[0].item() == pytest.approx(total.item(), rel=1e-12) and values[1].item() == pytest.approx(hard.item(), rel=1e-12)
    assert math.isnan(values[2].item())
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-15)


def test_retabulates_when_a_schedule_changes_T():
    torch.manual_seed(4)
    y, t = torch.randint(0, 10, (16,)), torch.randn(16, 10, dtype=torch.float64)
    fast = ClosedFormObjective(y, 10, t)
    s, idx = torch.randn(16, 10, dtype=torch.float64), torch.arange(16)
    for T in (4.0, 2.0):
        fast.prepare(T, 0.5, 0.5)
        values, _ = fast(s, fast.rows(idx))
        assert values[2].item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-12)


def test_equals_the_kd_method():
    torch.manual_seed(5)
    y, t, s = torch.randint(0, 10, (32,)), torch.randn(32, 10), torch.randn(32, 10)
    method = KD("hinton", 3.0, 0.3, 0.7)
    fast = ClosedFormObjective(y, 10, t)
    fast.prepare(method.temperature, method.hard_weight, method.soft_weight)
    values, _ = fast(s, fast.rows(torch.arange(32)))
    torch.testing.assert_close(values, torch.stack(kd_terms(method, s, y, t)).detach(), rtol=1e-5, atol=1e-6)


def test_bad_input_gives_one_line_errors():
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ConfigError, match="labels range over"):
        ClosedFormObjective(torch.tensor([0, 12]), 10)
    with pytest.raises(ConfigError, match="teacher logits have shape"):
        ClosedFormObjective(y, 10, torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="integer class labels"):
        ClosedFormObjective(torch.zeros(3, 10), 10)
    fast = ClosedFormObjective(y, 10, torch.zeros(3, 10))
    with pytest.raises(ConfigError, match="T must be > 0"):
        fast.prepare(0.0, 0.5, 0.5)
    fast.prepare(2.0, 0.5, 0.5)
    with pytest.raises(ConfigError, match="class count mismatch"):
        fast(torch.zeros(3, 7), fast.rows(torch.arange(3)))
    with pytest.raises(ConfigError, match="class count mismatch"):
        fast.rows_for(y, torch.zeros(3, 4))


MARKED = {"hinton": lambda T, K: 1.0, "extra-T": lambda T, K: T, "mean-reduction": lambda T, K: 1.0 / K, "no-T2": lambda T, K: 1.0 / T**2}
PROBABILITY_INPUT = {"softmax-input": lambda T, K: T * T, "softmax-input-no-T2": lambda T, K: 1.0}


def probability_input_reference(s, t, T):
    """(1/B) Σ (p·log p − p·q): F.kl_div given probabilities q, computed by F.kl_div itself."""
    return F.kl_div(F.softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")


def test_every_coding_marked_with_a_closed_form_is_that_form():
    from kdlab.losses import SOFT_LOSSES
    from kdlab.losses.kd import closed_form_of

    assert {n for n in SOFT_LOSSES.names() if (closed_form_of(SOFT_LOSSES.get(n)) or ("",))[0] == "kl"} == set(MARKED)
    assert {n for n in SOFT_LOSSES.names() if closed_form_of(SOFT_LOSSES.get(n))} == set(MARKED) | set(PROBABILITY_INPUT)
    torch.manual_seed(6)
    s = torch.randn(16, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(16, 7, dtype=torch.float64)
    T = 2.5
    for name, factor in {**MARKED, **PROBABILITY_INPUT}.items():  # the mark states the truth: value and gradient
        fn = SOFT_LOSSES.get(name)
        kind, marked_factor = closed_form_of(fn)
        assert marked_factor(T, 7) == pytest.approx(factor(T, 7))
        base = kd_loss(s, t, T) if kind == "kl" else probability_input_reference(s, t, T)
        ours, ref = fn(s, t, T), factor(T, 7) * base
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
        torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("coding", sorted(MARKED) + sorted(PROBABILITY_INPUT))
@pytest.mark.parametrize("T,hw,sw", [(4.0, 0.3, 0.7), (1.0, 0.0, 1.0)])
def test_closed_form_runs_every_marked_coding_exactly(coding, T, hw, sw):
    torch.manual_seed(7)
    y, t = torch.randint(0, 10, (24,)), 3 * torch.randn(24, 10, dtype=torch.float64)
    method = KD(coding, T, hw, sw)
    assert method.fast_path(y, 10, t) is not None
    fast = ClosedFormObjective(y, 10, t)
    fast.prepare_for(method)
    s = 2 * torch.randn(24, 10, dtype=torch.float64, requires_grad=True)
    values, grad = fast(s.detach(), fast.rows(torch.arange(24)))
    total, hard, soft = kd_terms(method, s, y, t)
    torch.testing.assert_close(values, torch.stack([total, hard, soft]).detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, torch.autograd.grad(total, s)[0], rtol=1e-12, atol=1e-15)
    online = ClosedFormObjective(y, 10)  # rows built per batch give the same
    online.prepare_for(method)
    torch.testing.assert_close(online(s.detach(), online.rows_for(y, t))[1], grad, rtol=1e-12, atol=1e-15)


def test_codings_without_closed_form_are_refused():
    from kdlab.losses import SOFT_LOSSES

    SOFT_LOSSES.register("test-squared-error")(lambda s, t, T: (s - t).pow(2).mean())
    try:
        method = KD("test-squared-error", 4.0)
        assert method.fast_path(torch.tensor([0, 1]), 10, torch.zeros(2, 10)) is None
        fast = ClosedFormObjective(torch.tensor([0, 1]), 10, torch.zeros(2, 10))
        with pytest.raises(ConfigError, match="no closed form"):
            fast.prepare_for(method)
    finally:
        SOFT_LOSSES.unregister("test-squared-error")


def test_leading_dimensions_are_independent_batches():
    """(seeds, B, K) logits give each seed's own values and gradient, as in ``kdlab compare``."""
    torch.manual_seed(8)
    y, t = torch.randint(0, 10, (60,)), torch.randn(60, 10, dtype=torch.float64)
    fast = ClosedFormObjective(y, 10, t)
    fast.prepare(3.0, 0.5, 0.5)
    idx = torch.randperm(60)[:48].view(3, 16)
    s = torch.randn(3, 16, 10, dtype=torch.float64)
    values, grad = fast(s, fast.rows(idx.reshape(-1)).view(3, 16, -1))
    for k in range(3):
        v_k, g_k = fast(s[k], fast.rows(idx[k]))
        torch.testing.assert_close(values[k], v_k, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(grad[k], g_k, rtol=1e-13, atol=1e-15)
