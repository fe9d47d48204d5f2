
import pytest
import torch
import torch.nn.functional as F

from kdlab import kd_loss
from kdlab.losses import SOFT_LOSSES

# The tutorial form of mean-reduction (WILD below) is the coding torch warns about; expected here.
pytestmark = pytest.mark.filterwarnings("ignore:reduction. .mean.:UserWarning")


def data(seed=0, B=6, K=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, generator=g, dtype=torch.float64), torch.randn(B, K, generator=g, dtype=torch.float64)


def test_all_codings_registered_with_docstrings():
    for name in ("hinton", "softmax-input", "softmax-input-no-T2", "extra-T", "mean-reduction", "no-T2"):
        fn = SOFT_LOSSES.get(name)
        assert fn.__doc__ and len(fn.__doc__) > 60


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_scaled_variants_relate_to_hinton_exactly(T):
    s, t = data()
    ref = kd_loss(s, t, T)
    K = s.shape[1]
    torch.testing.assert_close(SOFT_LOSSES.get("extra-T")(s, t, T), ref * T)
    torch.testing.assert_close(SOFT_LOSSES.get("mean-reduction")(s, t, T), ref / K)
    torch.testing.assert_close(SOFT_LOSSES.get("no-T2")(s, t, T), ref / T**2)


def test_softmax_input_formula_and_negative_values():
    s, t = data(1)
    T = 2.0
    q, p = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    expected = (p * (p.log() - q)).sum(1).mean()  # what KLDivLoss computes when given probabilities
    torch.testing.assert_close(SOFT_LOSSES.get("softmax-input-no-T2")(s, t, T), expected)
    torch.testing.assert_close(SOFT_LOSSES.get("softmax-input")(s, t, T), expected * T * T)
    # identical logits: the true KL is 0, the mis-coded loss is Σ p log p − Σ p² < 0
    x = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    pv = torch.softmax(x / 1.0, 1)
    val = SOFT_LOSSES.get("softmax-input-no-T2")(x, x, 1.0)
    assert val.item() == pytest.approx(float((pv * pv.log()).sum() - (pv * pv).sum()))
    assert val.item() < 0


def test_softmax_input_gradient_is_not_the_kd_gradient():
    s, t = data(2)
    s.requires_grad_(True)
    T = 3.0
    SOFT_LOSSES.get("softmax-input")(s, t, T).backward()
    q, p = torch.softmax(s.detach() / T, 1), torch.softmax(t / T, 1)
    B = s.shape[0]
    # d/ds of −T²/B Σ p·q  =  −T/B · (p⊙q − q·⟨p,q⟩)
    expected = -T / B * (p * q - q * (p * q).sum(1, keepdim=True))
    torch.testing.assert_close(s.grad, expected)
    assert not torch.allclose(s.grad, T * (q - p) / B)


# The codings exactly as tutorials write them, with nn.functional.kl_div / nn.KLDivLoss. kdlab's
# registered versions spell the same sums out (kl_div has no vmap rule); they must agree.
WILD = {
    "hinton": lambda s, t, T: torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / T, 1), F.softmax(t / T, 1)) * T * T,
    "softmax-input": lambda s, t, T: torch.nn.KLDivLoss(reduction="batchmean")(F.softmax(s / T, 1), F.softmax(t / T, 1)) * T * T,
    "softmax-input-no-T2": lambda s, t, T: F.kl_div(F.softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
    "extra-T": lambda s, t, T: F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T * T,
    "mean-reduction": lambda s, t, T: F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="mean") * T * T,
    "no-T2": lambda s, t, T: F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
}


@pytest.mark.parametrize("name", sorted(WILD))
def test_registered_coding_equals_the_tutorial_code(name):
    torch.manual_seed(3)
    s = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(16, 10, dtype=torch.float64) * 3
    for T in (1.0, 2.5, 7.0):
        ours = SOFT_LOSSES.get(name)(s, t, T)
        (g_ours,) = torch.autograd.grad(ours, s)
        wild = WILD[name](s, t, T)
        (g_wild,) = torch.autograd.grad(wild, s)
        assert ours.item() == pytest.approx(wild.item(), rel=1e-12, abs=1e-14)
        assert torch.allclose(g_ours, g_wild, rtol=1e-10, atol=1e-14)
