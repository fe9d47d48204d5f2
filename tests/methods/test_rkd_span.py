"""RKD's angle term in span coordinates (an embedding wider than the batch, D > N) against the
explicit N×N×D differences of the authors' ``RKdAngle``: values and gradients in float32 and float64
on random rows, near-duplicate rows, exactly equal rows, batches of one and two, huge and tiny
scales; finite-difference gradients; one step through the Trainer.

Tolerances are relative to the float64 explicit form on the same (float32 or float64) inputs, the
truth here. Achieved on these inputs (N = 24, D = 300), student side: float32 loss ≤ 1.3e-7,
gradient ≤ 5e-7 (the explicit float32 form: ≤ 1.2e-7 and ≤ 5.5e-7); float64 loss ≤ 7e-12 and
gradient ≤ 5e-9 for rows 1e-6 apart (≤ 3e-13 and 5e-11 at 1e-4 apart, ≤ 5e-15 otherwise). The
asserts (float32 2e-6 / 1e-5, float64 1e-10 / 1e-7) keep a margin of 15-20×. Float32 span
coordinates (instead of float64) would miss them for near duplicates: cosine errors up to 1e-3 at
1e-4 apart and 0.1 at 1e-6 apart; so does the Gram form, whose squared distances cancel
(benchmarks/rkd_student.md).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from kdlab.methods import build_method
from kdlab.methods.rkd import rkd_angle_loss, rkd_cosines, span_coordinates
from kdlab.recipes import load_recipe
from kdlab.pipeline import build_role_model
from kdlab.teacher import FrozenTeacher
from kdlab.train.build import build_trainer

N, D = 24, 300


def explicit_cosines(e):
    """The reference's N³ cosines: explicit differences, ``F.normalize``, ``bmm`` ([j, i, k])."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def explicit_angle_loss(s, t):
    return F.smooth_l1_loss(explicit_cosines(s), explicit_cosines(t.detach()))


def rows(case, dtype, seed=0):
    """N×D ReLU-like rows (a common positive offset, as after a ReLU) for one test case, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(N, D, generator=g, dtype=torch.float64).relu()
    if case.startswith("near"):  # pairs of rows that differ by ~delta per coordinate
        delta = float(case[4:])
        for a in range(0, 8, 2):
            e[a + 1] = e[a] + delta * torch.randn(D, generator=g, dtype=torch.float64)
    elif case == "equal":  # exactly equal rows: a triple and a pair
        e[1] = e[0]
        e[5] = e[0]
        e[7] = e[6]
    elif case == "offset":
        e = e + 100.0
    elif case.startswith("scale"):
        e = e * float(case[5:])
    return e.to(dtype)


def value_and_grad(fn, s, t):
    x = s.clone().requires_grad_()
    loss = fn(x, t)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.double(), grad.double()


def degenerate_zero(w, n):
    """Weights for the N³ cosines, 0 where i = j or k = j. There the difference is identically 0 and so
    is the true derivative, but the reference's normalize Jacobian (1/1e-12) adds and cancels huge
    terms that wash out the rest of the gradient in float32 (in the loss their weight is 0)."""
    w = w.view(n, n, n).clone()
    eye = torch.eye(n, dtype=torch.bool)
    return w.masked_fill(eye.unsqueeze(2) | eye.unsqueeze(1), 0).reshape(-1)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CASES = ["random", "near1e-4", "near1e-6", "equal", "offset", "scale1e-15", "scale1e15"]
TOL = {torch.float32: (2e-6, 1e-5), torch.float64: (1e-10, 1e-7)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_student_side_span_form_has_the_explicit_values_and_gradients(case, dtype):
    s = rows(case, dtype)
    t = torch.randn(N, 40, generator=torch.Generator().manual_seed(1), dtype=dtype)  # D < N: explicit
    truth = value_and_grad(explicit_angle_loss, s.double(), t.double())
    span = value_and_grad(rkd_angle_loss, s, t)
    assert truth[0].item() > 1e-3 and truth[1].norm() > 0
    loss_tol, grad_tol = TOL[dtype]
    assert rel(span[0], truth[0]) <= loss_tol
    assert rel(span[1], truth[1]) <= grad_tol
    if dtype == torch.float32:  # and as close to the explicit float32 form as that is to the truth
        explicit = value_and_grad(explicit_angle_loss, s, t)
        assert rel(explicit[1], truth[1]) <= grad_tol
        assert rel(span[1], explicit[1]) <= 2 * grad_tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["random", "near1e-6", "equal", "offset"])
def test_teacher_side_span_form_has_the_explicit_angles(case, dtype):
    s = torch.randn(N, 40, generator=torch.Generator().manual_seed(2), dtype=dtype)
    t = rows(case, dtype, seed=3)
    truth = explicit_angle_loss(s.double(), t.double())
    assert rel(rkd_angle_loss(s, t).double(), truth) <= TOL[dtype][0]


def test_exactly_equal_rows_keep_the_references_normalisation_and_its_gradient():
    # the explicit form's zero difference has unit vector 0 and the normalize Jacobian 1/1e-12 at 0:
    # the gradient of equal student rows is ~1e8 here, and each row of a triple gets its own
    s = rows("equal", torch.float64)
    cos = rkd_cosines(s)
    zero = torch.zeros(N, N, dtype=torch.bool)
    zero[[0, 0, 1, 1, 5, 5, 6, 7], [1, 5, 0, 5, 0, 1, 7, 6]] = True
    zero |= torch.eye(N, dtype=torch.bool)
    zero = zero.unsqueeze(2) | zero.unsqueeze(1)  # [j, i, k]: e_i = e_j or e_k = e_j
    assert not cos.view(N, N, N)[zero].any() and cos.view(N, N, N)[~zero].abs().min() > 0
    t = torch.randn(N, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, grad = value_and_grad(rkd_angle_loss, s, t)
    _, ref = value_and_grad(explicit_angle_loss, s, t)
    assert grad[0].norm() > 1e6 and not torch.allclose(grad[0], grad[1])
    assert rel(grad, ref) <= 1e-12
    others = [i for i in range(N) if i not in (0, 1, 5, 6, 7)]  # rows with ordinary gradients
    assert grad[others].norm() < 1 and rel(grad[others], ref[others]) <= 1e-12
    coords, same = span_coordinates(s)
    assert torch.equal(coords[0], coords[1]) and torch.equal(coords[0], coords[5]) and torch.equal(coords[6], coords[7])
    assert same[0, 5] and same[7, 6] and not same[0, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_rows_equal_and_overflowing_rows_match_the_explicit_form(dtype):
    t = torch.randn(N, 40, generator=torch.Generator().manual_seed(5), dtype=dtype)
    flat = torch.ones(N, D, dtype=dtype)  # every difference 0: every cosine 0, every gradient 0
    span, explicit = value_and_grad(rkd_angle_loss, flat, t), value_and_grad(explicit_angle_loss, flat, t)
    assert span[0].item() == pytest.approx(explicit[0].item(), rel=1e-12)
    assert torch.equal(span[1], explicit[1]) and not span[1].any()
    if dtype == torch.float32:  # squares past float32's range: both forms' norms overflow the same way
        huge = rows("random", dtype) * 1e25
        assert torch.equal(rkd_cosines(huge), explicit_cosines(huge))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cosines_of_tiny_batches_match(n, dtype):
    # rkd_angle_loss is a documented 0 below 3 rows; the cosines themselves still match the reference
    g = torch.Generator().manual_seed(6)
    e = torch.randn(n, 7, generator=g, dtype=dtype, requires_grad=True)
    w = degenerate_zero(torch.randn(n**3, generator=g, dtype=dtype), n)
    ours, ref = rkd_cosines(e), explicit_cosines(e)
    assert torch.allclose(ours, ref, atol=1e-6 if dtype == torch.float32 else 1e-14)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours @ w, e), torch.autograd.grad(ref @ w, e)
    assert torch.allclose(g_ours, g_ref, atol=1e-5 if dtype == torch.float32 else 1e-12)
    coords, same = span_coordinates(e)
    assert coords.shape == (n, n) and torch.equal(same, torch.eye(n, dtype=torch.bool))


def test_gradcheck_through_the_span_coordinates_float64():
    g = torch.Generator().manual_seed(7)
    s = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 13, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: rkd_angle_loss(x, t), (s,), eps=1e-6, atol=1e-7)
    w = degenerate_zero(torch.randn(6**3, generator=g, dtype=torch.float64), 6)
    assert torch.autograd.gradcheck(lambda x: rkd_cosines(x) @ w, (s,), eps=1e-6, atol=1e-6)
    near = s.detach().clone()
    near[1] = near[0] + 1e-3 * torch.randn(11, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: rkd_angle_loss(x, t), (near.requires_grad_(),), eps=1e-8, atol=1e-5)


def test_a_step_through_the_trainer_with_both_embeddings_wider_than_the_batch(digits):
    # batches of 16; student hidden 40 and teacher hidden 32: both sides take the span form
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[32]", "student.model.hidden=[40]",
                                        "student.train.batch_size=16"])
    teacher, student = build_role_model(recipe, "teacher", digits), build_role_model(recipe, "student", digits)
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)
    method = build_method("rkd", recipe.distill, {})
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x = digits.train.x[idx].flatten(1)
    ref_t.eval()
    h_s = ref_s.net[:-1](x)
    with torch.no_grad():
        h_t = ref_t.net[:-1](x)
    assert h_s.shape == (16, 40) and h_t.shape == (16, 32)
    expected = explicit_angle_loss(h_s, h_t).detach()
    row = trainer.train_epoch()[0]
    trainer.close()
    assert float(row[4]) == pytest.approx(float(expected), rel=1e-5)  # the angle term
