import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.methods.attention import at_loss, attention_map


def fmap(channels):
    """A (1, C, H, W) map from nested lists [channel][row][col]."""
    return torch.tensor([channels], dtype=torch.float32)


def test_attention_map_by_hand():
    # channel 0 = [1, 2], channel 1 = [3, 0] on a 1x2 grid: mean of squares = [(1+9)/2, (4+0)/2] = [5, 2]
    a = attention_map(fmap([[[1.0, 2.0]], [[3.0, 0.0]]]))
    norm = math.sqrt(5**2 + 2**2)
    assert a.shape == (1, 2) and a[0].tolist() == pytest.approx([5 / norm, 2 / norm])


def test_attention_map_uses_absolute_values_for_other_powers():
    # p = 1: mean of |f| = [(1+3)/2, (2+0)/2] = [2, 1]
    a = attention_map(fmap([[[-1.0, 2.0]], [[3.0, 0.0]]]), p=1)
    assert a[0].tolist() == pytest.approx([2 / math.sqrt(5), 1 / math.sqrt(5)])


def test_at_loss_by_hand_mean_over_batch_and_positions_summed_over_pairs():
    s1, t1 = fmap([[[1.0, 0.0]]]), fmap([[[0.0, 2.0]]])  # maps [1, 0] and [0, 1]: diff^2 mean = (1+1)/2
    s2 = fmap([[[1.0, 1.0]], [[1.0, 1.0]]])
    t2 = fmap([[[4.0, 4.0]]])  # same direction [1/sqrt2, 1/sqrt2], other channel count: 0
    assert at_loss([s1, s2], [t1, t2]).item() == pytest.approx(1.0)
    batch_s = torch.cat([s1, t1])  # sample 0 differs from its target, sample 1 equals it
    batch_t = torch.cat([t1, t1])
    assert at_loss([batch_s], [batch_t]).item() == pytest.approx((1 + 1 + 0 + 0) / 4)


def test_at_loss_equals_the_reference_expression_on_random_maps():
    """attention-transfer utils.py: at(x) = F.normalize(x.pow(2).mean(1).view(B, -1)), (at(x)-at(y)).pow(2).mean()."""
    torch.manual_seed(0)
    pairs = [(torch.randn(4, 3, 6, 6), torch.randn(4, 7, 6, 6)), (torch.randn(4, 5, 3, 3), torch.randn(4, 2, 3, 3))]

    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    reference = sum((at(x) - at(y)).pow(2).mean() for x, y in pairs)
    ours = at_loss([x for x, _ in pairs], [y for _, y in pairs])
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_larger_map_is_pooled_on_energy_not_on_the_feature():
    # student 2x4 map, 2x2 windows: energies (1+1+1+1)/4 = 1 and (0+4+0+0)/4 = 1 -> [1/sqrt2, 1/sqrt2]
    # (pooling the feature first would give window means 0 and 0.5 -> [0, 1])
    student = fmap([[[1.0, -1.0, 0.0, 2.0], [-1.0, 1.0, 0.0, 0.0]]])
    teacher = fmap([[[3.0, 3.0]]])
    assert attention_map(student, size=(1, 2))[0].tolist() == pytest.approx([1 / math.sqrt(2)] * 2)
    assert at_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-12)
    assert at_loss([teacher], [student]).item() == pytest.approx(0.0, abs=1e-12)  # either side may be larger


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    f = torch.randn(2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: attention_map(x), (f,))
    assert torch.autograd.gradcheck(lambda x: attention_map(x, p=3, size=(1, 2)), (f,))
    t1 = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    t2 = torch.randn(2, 4, 1, 2, dtype=torch.float64)
    g = torch.randn(2, 1, 2, 4, dtype=torch.float64, requires_grad=True)  # pooled to the teacher's 1x2
    assert torch.autograd.gradcheck(lambda a, b: at_loss([a, b], [t1, t2]), (f, g))


def test_attention_map_is_invariant_to_scaling_and_channel_permutation():
    torch.manual_seed(0)
    f = torch.randn(3, 6, 4, 5)
    a = attention_map(f)
    assert torch.allclose(attention_map(7.5 * f), a, atol=1e-6)
    assert torch.allclose(attention_map(-0.01 * f), a, atol=1e-6)
    assert torch.allclose(attention_map(f[:, torch.randperm(6)]), a, atol=1e-6)
    t = torch.randn(3, 2, 4, 5)
    assert at_loss([f[:, torch.randperm(6)] * 3], [t * 10]).item() == pytest.approx(at_loss([f], [t]).item(), rel=1e-5)


def test_teacher_feature_never_receives_gradient():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t_leaf = torch.randn(2, 5, 4, 4, requires_grad=True)
    at_loss([s], [t_leaf]).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t_leaf.grad is None
    conv = torch.nn.Conv2d(1, 5, 3, padding=1)
    with torch.no_grad():
        t = conv(torch.randn(2, 1, 4, 4))
    at_loss([s], [t]).backward()
    assert conv.weight.grad is None


def test_identical_maps_give_zero_loss():
    f = torch.randn(2, 4, 3, 3)
    assert at_loss([f], [f.clone()]).item() == 0.0


@pytest.mark.parametrize(
    "students,teachers,needle",
    [
        ([torch.zeros(2, 10)], [torch.zeros(2, 3, 4, 4)], "student 'fc_in' has shape [2, 10]"),
        ([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 5, 16)], "teacher 'layer2' has shape [2, 5, 16]"),
        ([torch.zeros(2, 3, 4, 4)], [torch.zeros(3, 3, 4, 4)], "different batch sizes"),
        ([torch.zeros(2, 3, 4, 4)], [], "got 1 and 0"),
    ],
)
def test_bad_inputs_are_one_line_errors(students, teachers, needle):
    with pytest.raises(ConfigError) as err:
        at_loss(students, teachers, names=[("fc_in", "layer2")])
    assert "\n" not in str(err.value) and needle in str(err.value)


def test_power_must_be_positive():
    with pytest.raises(ConfigError, match="must be positive"):
        attention_map(torch.zeros(1, 1, 2, 2), p=0)


def _reference_map(f, p):
    """The reference expression in float64, at a scale where |f|^p and its norm are representable."""
    f = f.double()
    energy = f.pow(2) if p == 2 else f.abs().pow(p)
    return F.normalize(energy.mean(1).reshape(f.size(0), -1), dim=1)


@pytest.mark.parametrize("p,scale", [(2, 1e10), (4, 1e5), (2, 1e-8), (3, 1e-15)])
def test_float32_map_is_unit_norm_and_equal_to_the_reference_at_extreme_scales(p, scale):
    # float32: sum of energy^2 overflows for |f| past ~4e9 (p = 2) / ~6.5e4 (p = 4) and the map became zeros;
    # tiny maps fell under F.normalize's 1e-12 floor and came out shorter than 1
    torch.manual_seed(0)
    g = torch.randn(2, 3, 4, 5)
    g[1] *= 0.01  # per-sample scales differ
    a = attention_map(g * scale, p)
    torch.testing.assert_close(a.double(), _reference_map(g, p), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("p,scale", [(2, 1e10), (4, 1e5), (2, 1.0), (4, 1.0)])
def test_float32_gradient_is_finite_and_equal_to_the_reference_at_any_scale(p, scale):
    # a(s·g) = a(g), so d/df at f = s·g is (d/dg at g) / s
    torch.manual_seed(1)
    g, t = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    g_leaf = g.clone().requires_grad_()
    (ref,) = torch.autograd.grad((_reference_map(g_leaf, p) - _reference_map(t, p)).pow(2).mean(), g_leaf)
    f = (g * scale).float().requires_grad_()
    at_loss([f], [t.float() * scale], p).backward()
    assert torch.isfinite(f.grad).all()
    torch.testing.assert_close(f.grad.double() * scale, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_all_zero_map_stays_zero_with_zero_gradient():
    f = torch.zeros(2, 3, 2, 2, requires_grad=True)
    assert attention_map(f).abs().sum() == 0
    at_loss([f], [torch.randn(2, 3, 2, 2)]).backward()
    assert torch.isfinite(f.grad).all()
