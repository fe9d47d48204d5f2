import pytest
import torch
from torch import nn

from kdlab.train.lean_adam import LeanAdam, LeanAdamW


def run(opt_cls, steps=6, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = opt_cls(model.parameters(), lr=0.01, **kw)
    x, y = torch.randn(16, 7), torch.randint(0, 3, (16,))
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i == 2:
            opt.param_groups[0]["lr"] = 0.003  # as a scheduler would
    return [p.detach().clone() for p in model.parameters()], opt


@pytest.mark.parametrize("lean,stock,kw", [(LeanAdam, torch.optim.Adam, {}), (LeanAdamW, torch.optim.AdamW, {"weight_decay": 0.1})])
def test_identical_to_stock_fused_and_close_to_reference(lean, stock, kw):
    try:
        stock(nn.Linear(1, 1).parameters(), fused=True)
    except RuntimeError:
        pytest.skip("this torch build has no fused CPU Adam; LeanAdam then uses the stock step")
    a, opt_a = run(lean, fused=True, **kw)
    b, opt_b = run(stock, fused=True, **kw)
    c, _ = run(stock, foreach=False, **kw)
    for pa, pb, pc in zip(a, b, c):
        assert torch.equal(pa, pb)
        torch.testing.assert_close(pa, pc, rtol=1e-5, atol=1e-6)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert [float(s["step"]) for s in sa["state"].values()] == [float(s["step"]) for s in sb["state"].values()] == [6.0] * 4


def test_falls_back_without_grads():
    p = nn.Parameter(torch.ones(3))
    opt = LeanAdam([p], lr=0.1)
    opt.step()  # no grad: stock step is a no-op, no crash
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("cls", [LeanAdam, LeanAdamW])
def test_zero_grad_sets_none_or_zeros(cls):
    p = nn.Parameter(torch.ones(3))
    opt = cls([p], lr=0.1)
    p.grad = torch.full((3,), 2.0)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None
