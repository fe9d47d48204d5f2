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


def test_objective_validates_class_count():
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
