import pytest
import torch
import torch.nn.functional as F

from kdlab import ConfigError, kd_loss
from kdlab.losses import DistillationObjective


def test_named_weights_combine_terms():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    obj = DistillationObjective("hinton", temperature=3.0, hard_weight=0.3, soft_weight=0.7)
    terms = obj(s, y, t)
    hard = F.cross_entropy(s, y)
    soft = kd_loss(s, t, 3.0)
    assert terms["hard"].item() == pytest.approx(hard.item())
    assert terms["soft"].item() == pytest.approx(soft.item())
    assert terms["total"].item() == pytest.approx(0.3 * hard.item() + 0.7 * soft.item())


def test_without_teacher_only_hard_term():
    s, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    terms = DistillationObjective()(s, y)
    assert set(terms) == {"total", "hard"}
    assert terms["total"].item() == pytest.approx(F.cross_entropy(s, y).item())


def test_validation():
    with pytest.raises(ConfigError, match="temperature"):
        DistillationObjective(temperature=0)
    with pytest.raises(ConfigError, match="weights"):
        DistillationObjective(hard_weight=-0.1)
    with pytest.raises(ConfigError, match="unknown loss 'kl'"):
        DistillationObjective("kl")


@pytest.mark.parametrize("T,hw,sw", [(1.0, 1.0, 0.0), (3.0, 0.5, 0.5), (7.0, 0.3, 0.7), (0.5, 0.0, 1.0)])
def test_fused_hinton_path_equals_unfused_composition(T, hw, sw):
    torch.manual_seed(0)
    s = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    terms = DistillationObjective("hinton", T, hw, sw)(s, y, t)
    terms["total"].backward()
    s_ref = s.detach().clone().requires_grad_(True)
    hard = F.cross_entropy(s_ref, y)
    soft = kd_loss(s_ref, t.detach(), T)
    (hw * hard + sw * soft).backward()
    torch.testing.assert_close(terms["hard"], hard.detach())
    torch.testing.assert_close(terms["soft"], soft.detach())
    torch.testing.assert_close(terms["total"].detach(), (hw * hard + sw * soft).detach())
    torch.testing.assert_close(s.grad, s_ref.grad)
    assert t.grad is None
    assert not terms["hard"].requires_grad and not terms["soft"].requires_grad


def test_fused_path_gradcheck():
    torch.manual_seed(1)
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 2])
    obj = DistillationObjective("hinton", 2.0, 0.4, 0.6)
    assert torch.autograd.gradcheck(lambda x: obj(x, y, t)["total"], (s,))


def test_fused_path_still_validates():
    obj = DistillationObjective("hinton", 2.0)
    with pytest.raises(ConfigError, match="class count mismatch"):
        obj(torch.zeros(2, 10), torch.tensor([0, 1]), torch.zeros(2, 5))


def test_hard_loss_equals_cross_entropy():
    import torch.nn.functional as F

    from kdlab.losses.objective import hard_loss

    torch.manual_seed(0)
    s = torch.randn(32, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (32,))
    ours, ref = hard_loss(s, y), F.cross_entropy(s, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-14)
    assert torch.allclose(torch.autograd.grad(ours, s)[0], torch.autograd.grad(ref, s)[0], atol=1e-15)
    probs = torch.softmax(torch.randn(32, 10, dtype=torch.float64), 1)
    assert hard_loss(s, probs).item() == pytest.approx(F.cross_entropy(s, probs).item())


def test_unfused_path_equals_fused_path():
    torch.manual_seed(1)
    obj = DistillationObjective("hinton", 3.0, 0.3, 0.7)
    s = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    y, t = torch.randint(0, 10, (16,)), torch.randn(16, 10, dtype=torch.float64)
    a, b = obj(s, y, t), obj(s, y, t, fused=False)
    for k in ("total", "hard", "soft"):
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-12)
    ga, gb = (torch.autograd.grad(x["total"], s)[0] for x in (a, b))
    assert torch.allclose(ga, gb, atol=1e-14)
