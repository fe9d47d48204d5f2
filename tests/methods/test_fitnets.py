import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.methods.fitnets import hint_loss


def test_hint_loss_is_the_mean_squared_difference_by_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    # (1-0)^2 + (2-2)^2 + (3-3)^2 + (4-6)^2 = 5, over 4 elements
    assert hint_loss(s, t).item() == pytest.approx(5 / 4)


def test_hint_loss_is_the_papers_half_squared_norm_divided_by_half_the_element_count():
    """Romero et al.: L_HT = 1/2 ||u_h - r(v_g)||^2 summed; we average over the N elements instead."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    paper = 0.5 * sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist()))
    assert hint_loss(s, t).item() == pytest.approx(paper / (s.numel() / 2), rel=1e-5)


def test_hint_loss_gradient_by_hand_and_by_finite_differences():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    hint_loss(s, t).backward()
    # d/ds mean((s - t)^2) = 2 (s - t) / N
    assert s.grad.flatten().tolist() == pytest.approx([2 * 1 / 4, 0.0, 0.0, 2 * -2 / 4])
    s64 = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t64 = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: hint_loss(x, t64), (s64,))


def test_identical_features_give_zero_loss_and_zero_gradient():
    f = torch.randn(3, 5, requires_grad=True)
    loss = hint_loss(f, f.detach().clone())
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(f.grad) == 0


def test_teacher_feature_never_receives_gradient():
    s = torch.randn(2, 4, requires_grad=True)
    t_leaf = torch.randn(2, 4, requires_grad=True)  # even a teacher feature wrongly tracked by autograd
    hint_loss(s, t_leaf).backward()
    assert s.grad is not None and t_leaf.grad is None
    layer = torch.nn.Linear(4, 4)
    with torch.no_grad():
        t = layer(torch.randn(2, 4))
    hint_loss(s, t).backward()
    assert layer.weight.grad is None


def test_shape_mismatch_is_one_line_naming_both_shapes():
    with pytest.raises(ConfigError) as err:
        hint_loss(torch.zeros(2, 8, 7, 7), torch.zeros(2, 16, 7, 7))
    message = str(err.value)
    assert "\n" not in message and "[2, 8, 7, 7]" in message and "[2, 16, 7, 7]" in message and "adapter" in message
