import math

import pytest
import torch

from kdlab import ConfigError, kd_loss


def softmax(v, T):
    e = [math.exp(x / T) for x in v]
    z = sum(e)
    return [x / z for x in e]


def test_two_class_closed_form():
    # p = softmax([ln 3, 0]) = [3/4, 1/4], q = [1/2, 1/2]: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # at T = 2 the same logits are softened, and the T^2 factor multiplies the KL by 4
    p, q = softmax([math.log(3.0), 0.0], 2.0), [0.5, 0.5]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(s, t, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_worked_example_values():
    s = torch.tensor([[1.8, 0.9, 0.4]])
    t = torch.tensor([[2.0, 1.0, 0.1]])
    # hand-computed: p = [0.50169, 0.30429, 0.19402], q = [0.46856, 0.29876, 0.23268]
    assert kd_loss(s, t, 2.0).item() == pytest.approx(4 * 0.0046005637, rel=1e-5)


def test_batch_mean_not_class_mean():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    per_row = [kd_loss(s[i : i + 1], t[i : i + 1], 3.0).item() for i in range(5)]
    assert kd_loss(s, t, 3.0).item() == pytest.approx(sum(per_row) / 5, rel=1e-5)


@pytest.mark.parametrize("T", [0.5, 1.0, 3.0, 10.0])
def test_gradient_matches_analytic_formula(T):
    torch.manual_seed(1)
    B = 6
    s = torch.randn(B, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, 10, dtype=torch.float64)
    kd_loss(s, t, T).backward()
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / B
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_finite_difference_gradient():
    torch.manual_seed(2)
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 2.5), (s,))


def test_zero_for_identical_logits_and_no_gradient():
    x = torch.randn(8, 10, requires_grad=True)
    loss = kd_loss(x, x.detach().clone(), 4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert x.grad.abs().max().item() < 1e-6


def test_never_negative():
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        scale = float(torch.rand(1, generator=g)) * 20
        s = torch.randn(4, 10, generator=g) * scale
        t = torch.randn(4, 10, generator=g) * scale
        T = 0.1 + float(torch.rand(1, generator=g)) * 10
        assert kd_loss(s, t, T).item() >= -1e-7


def test_teacher_gets_no_gradient():
    s = torch.randn(2, 3, requires_grad=True)
    t = torch.randn(2, 3, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert t.grad is None


def test_stable_for_extreme_logits():
    s = torch.tensor([[1000.0, -1000.0, 0.0]])
    t = torch.tensor([[-1000.0, 1000.0, 0.0]])
    assert torch.isfinite(kd_loss(s, t, 1.0))


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_rejects_non_positive_temperature(T):
    with pytest.raises(ConfigError, match="T must be > 0"):
        kd_loss(torch.zeros(1, 3), torch.zeros(1, 3), T)


def test_rejects_class_count_mismatch():
    with pytest.raises(ConfigError, match="class count mismatch: student has 10 outputs, teacher has 100"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 100), 2.0)


def test_hard_loss_equals_cross_entropy():
    import torch.nn.functional as F

    from kdlab.losses.kd import hard_loss

    torch.manual_seed(0)
    s = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    ours, ref = hard_loss(s, y), F.cross_entropy(s, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-14)
    assert torch.allclose(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0], atol=1e-15)
    probs = torch.softmax(torch.randn(32, 10, dtype=torch.float64), 1)
    assert hard_loss(s, probs).item() == pytest.approx(F.cross_entropy(s, probs).item())
