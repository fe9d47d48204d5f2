import pytest
import torch
import torch.nn.functional as F

from kdlab import ConfigError, kd_loss
from kdlab.methods import CE, KD, Batch, Outputs


def _terms(method, s, y, t=None):
    terms = method(Batch(s, y), Outputs(s), None if t is None else Outputs(t))
    return terms, method.total(terms)


def test_named_weights_combine_terms():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    terms, total = _terms(KD("hinton", temperature=3.0, hard_weight=0.3, soft_weight=0.7), s, y, t)
    hard = F.cross_entropy(s, y)
    soft = kd_loss(s, t, 3.0)
    assert terms["hard"].item() == pytest.approx(hard.item())
    assert terms["soft"].item() == pytest.approx(soft.item())
    assert total.item() == pytest.approx(0.3 * hard.item() + 0.7 * soft.item())


def test_without_teacher_only_hard_term():
    s, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    terms, total = _terms(CE(), s, y)
    assert set(terms) == {"hard"}
    assert total.item() == pytest.approx(F.cross_entropy(s, y).item())


def test_validation():
    with pytest.raises(ConfigError, match="temperature"):
        KD(temperature=0)
    with pytest.raises(ConfigError, match="weights"):
        KD(hard_weight=-0.1)
    with pytest.raises(ConfigError, match="unknown loss 'kl'"):
        KD("kl")


def test_kd_validates_class_count():
    with pytest.raises(ConfigError, match="class count mismatch"):
        _terms(KD("hinton", 2.0), torch.zeros(2, 10), torch.tensor([0, 1]), torch.zeros(2, 5))
