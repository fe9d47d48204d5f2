"""The hint's moment form against the written-out conv1x1 + BatchNorm + MSE (float64), its rounding
in float32, edge inputs, and the adapter that uses it (running statistics included)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.losses.hint import conv_bn_hint_loss, hint_loss
from kdlab.methods.adapters import ConvAdapter


def written_out(s, w, t, g, b, eps, mean=None, var=None):
    y = F.conv2d(s, w.reshape(w.shape[0], -1, 1, 1))
    y = F.batch_norm(y, mean, var, g, b, training=mean is None, eps=eps)
    return F.mse_loss(y, t)


def case(b=4, cs=3, ct=5, h=3, w=2, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, cs, h, w, generator=g, dtype=dtype) * scale + 2.0).requires_grad_()
    t = torch.randn(b, ct, h, w, generator=g, dtype=dtype) * scale + 1.5
    weight = torch.randn(ct, cs, generator=g, dtype=dtype).requires_grad_()
    gamma = (torch.rand(ct, generator=g, dtype=dtype) + 0.5).requires_grad_()
    beta = torch.randn(ct, generator=g, dtype=dtype).requires_grad_()
    return s, weight, t, gamma, beta


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("b,h,w", [(4, 3, 2), (1, 3, 3), (7, 1, 1)])
def test_the_moment_form_equals_the_written_out_loss_and_gradients_in_float64(b, h, w):
    s, weight, t, gamma, beta = case(b=b, h=h, w=w)
    params = (s, weight, gamma, beta)
    ref = written_out(s, weight, t, gamma, beta, 1e-5)
    got, mu, var = conv_bn_hint_loss(s, weight, t, gamma, beta, 1e-5)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, r in zip(grads(got, params), grads(ref, params)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    y = F.conv2d(s, weight.reshape(5, 3, 1, 1)).detach()
    torch.testing.assert_close(mu, y.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, y.var(dim=(0, 2, 3), unbiased=False))


def test_the_moment_form_with_running_statistics_equals_eval_mode_batchnorm():
    s, weight, t, gamma, beta = case()
    mean, var = torch.randn(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.1
    params = (s, weight, gamma, beta)
    ref = written_out(s, weight, t, gamma, beta, 1e-3, mean, var)
    got, _, _ = conv_bn_hint_loss(s, weight, t, gamma, beta, 1e-3, mean=mean, var=var)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, r in zip(grads(got, params), grads(ref, params)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_gradients_match_finite_differences():
    s, weight, t, gamma, beta = case(b=2, cs=2, ct=3, h=2, w=2)
    assert torch.autograd.gradcheck(lambda *p: conv_bn_hint_loss(p[0], p[1], t, p[2], p[3], 1e-5)[0],
                                    (s, weight, gamma, beta))


def test_hand_checkable_value():
    # one channel each way, w = 1, γ = 1, β = 0: BN makes the student pixels [−1, 1] (eps 0);
    # against t = [0, 0] the mean squared difference is 1, against t = [−1, 1] it is 0
    s = torch.tensor([[[[1.0]]], [[[3.0]]]], dtype=torch.float64)
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    loss0, mu, var = conv_bn_hint_loss(s, one, torch.zeros(2, 1, 1, 1, dtype=torch.float64), one[0], zero, 0.0)
    assert loss0.item() == pytest.approx(1.0) and mu.item() == 2.0 and var.item() == 1.0
    t = torch.tensor([-1.0, 1.0], dtype=torch.float64).view(2, 1, 1, 1)
    assert conv_bn_hint_loss(s, one, t, one[0], zero, 0.0)[0].item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-4])
def test_float32_rounding_stays_small_against_float64_on_a_close_fit(scale):
    # a student that explains ~99% of the teacher map: the form's differences of large terms are the risk
    s, weight, _, gamma, beta = case(b=8, cs=4, ct=16, h=5, w=5, scale=scale)
    with torch.no_grad():
        y = F.batch_norm(F.conv2d(s, weight.reshape(16, 4, 1, 1)), None, None, gamma, beta, training=True)
        t = y + 0.1 * y.std() * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    p32 = [x.detach().float().requires_grad_() for x in (s, weight, gamma, beta)]
    p64 = [x.detach().double().requires_grad_() for x in p32]  # the same (rounded) inputs, exactly
    t32 = t.float()
    ref = written_out(p64[0], p64[1], t32.double(), p64[2], p64[3], 1e-5)
    got, _, _ = conv_bn_hint_loss(p32[0], p32[1], t32, p32[2], p32[3], 1e-5)
    plain = written_out(*[x.detach().requires_grad_() for x in p32[:2]], t32, *[x.detach() for x in p32[2:]], 1e-5)
    assert got.dtype == torch.float32
    # no further from float64 than float32 written out, give or take its own rounding
    tol = max(2e-4, 4 * abs(plain.item() - ref.item()) / ref.item())
    assert got.item() == pytest.approx(ref.item(), rel=tol)
    for a, r in zip(grads(got, p32), grads(ref, p64)):
        assert (a.double() - r).norm() <= 1e-3 * r.norm() + 1e-12


def test_a_perfect_fit_is_zero_not_negative_and_duplicate_pixels_are_finite():
    s, weight, _, gamma, beta = case(b=3, cs=2, ct=4, h=2, w=2, dtype=torch.float32)
    with torch.no_grad():
        t = F.batch_norm(F.conv2d(s, weight.reshape(4, 2, 1, 1)), None, None, gamma, beta, training=True)
    loss, _, _ = conv_bn_hint_loss(s, weight, t, gamma, beta, 1e-5)
    assert 0.0 <= loss.item() < 1e-5
    same = torch.ones(2, 2, 3, 3, requires_grad=True)  # every pixel equal: zero batch variance, as BN sees it
    t2 = torch.randn(2, 4, 3, 3)
    got = conv_bn_hint_loss(same, weight.detach(), t2, gamma.detach(), beta.detach(), 1e-5)[0]
    ref = written_out(same, weight.detach(), t2, gamma.detach(), beta.detach(), 1e-5)
    assert torch.isfinite(got) and got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_mismatched_maps_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="same batch and size|one batch and size"):
        conv_bn_hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(5, 3), torch.zeros(2, 5, 2, 2), torch.ones(5),
                          torch.zeros(5), 1e-5)
    with pytest.raises(ConfigError, match="equal shapes"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def explicit_hint(adapter, s, t):
    return hint_loss(*adapter(s, t))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("pool", ["none", "student", "teacher"])
def test_the_adapter_trains_like_the_written_out_conv_and_batchnorm(momentum, pool):
    torch.manual_seed(0)
    s_hw, t_hw = {"none": (4, 4), "student": (6, 6), "teacher": (4, 4)}[pool], {"none": (4, 4), "student": (3, 3), "teacher": (8, 8)}[pool]
    size = (min(s_hw[0], t_hw[0]), min(s_hw[1], t_hw[1]))
    fast = ConvAdapter(3, 6, size, s_hw != size, t_hw != size, dtype=torch.float64)
    fast.proj[1].momentum = momentum
    slow = copy.deepcopy(fast)
    opt_f, opt_s = torch.optim.SGD(fast.parameters(), lr=0.1), torch.optim.SGD(slow.parameters(), lr=0.1)
    for step in range(4):
        s = torch.randn(5, 3, *s_hw, dtype=torch.float64)
        t = torch.randn(5, 6, *t_hw, dtype=torch.float64)
        lf, ls = fast.hint(s, t), explicit_hint(slow, s, t)
        assert lf.item() == pytest.approx(ls.item(), rel=1e-10)
        for opt, loss in ((opt_f, lf), (opt_s, ls)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    fast.eval(), slow.eval()
    s, t = torch.randn(2, 3, *s_hw, dtype=torch.float64), torch.randn(2, 6, *t_hw, dtype=torch.float64)
    assert fast.hint(s, t).item() == pytest.approx(explicit_hint(slow, s, t).item(), rel=1e-10)


def test_one_value_per_channel_uses_the_running_statistics_and_leaves_them():
    fast = ConvAdapter(3, 4, (1, 1), False, False, dtype=torch.float64)
    slow = copy.deepcopy(fast)
    s, t = torch.randn(1, 3, 1, 1, dtype=torch.float64), torch.randn(1, 4, 1, 1, dtype=torch.float64)
    assert fast.hint(s, t).item() == pytest.approx(explicit_hint(slow, s, t).item(), rel=1e-10)
    assert fast.proj[1].num_batches_tracked.item() == 0
    torch.testing.assert_close(fast.state_dict(), slow.state_dict())


def test_under_autocast_the_adapter_takes_the_written_out_route():
    torch.manual_seed(0)
    fast = ConvAdapter(3, 4, (4, 4), False, False)
    slow = copy.deepcopy(fast)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = fast.hint(s, t), explicit_hint(slow, s, t)
    assert a.item() == b.item()
