"""RKD (Park et al. 2019): values by hand, a loop-by-loop reference, the authors' expression,
finite-difference gradients, the invariances the paper states, no teacher gradient, small batches,
one-line errors, the last-Linear pre-hook tap, and the method through the Trainer on digits."""

import copy
import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.methods import METHODS, Batch, Outputs, build_method
from kdlab.features import PENULTIMATE, FeatureTap
from kdlab.methods.rkd import (RKD, RKDParams, pdist, rkd_angle_loss, rkd_distance_loss, rkd_embedding,
                               span_coordinates)
from kdlab.pipeline import build_role_model
from kdlab.recipes import load_recipe
from kdlab.teacher import FrozenTeacher
from kdlab.train.build import build_trainer

RIGHT = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)  # sides 3, 4, 5
EQUI = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)  # sides 1, 1, 1


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def loop_distance(s, t):
    """Eq. 3-5 with loops: ψ_D = |a − b| / mean over i≠j of |a − b|; Huber averaged over all N² pairs."""
    def psi(e):
        n = len(e)
        d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]
    ps, pt = psi(s.tolist()), psi(t.tolist())
    n = len(ps)
    return sum(huber(ps[i][j] - pt[i][j]) for i in range(n) for j in range(n)) / n**2


def loop_angle(s, t):
    """Eq. 6-7 with loops: cos of the angle at anchor j, <e_ij, e_kj> (0 when i = j or k = j);
    Huber averaged over all N³ (j, i, k)."""
    def cos(e, i, j, k):
        if i == j or k == j:
            return 0.0
        a = [x - y for x, y in zip(e[i], e[j])]
        b = [x - y for x, y in zip(e[k], e[j])]
        return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))
    es, et = s.tolist(), t.tolist()
    n = len(es)
    return sum(huber(cos(es, i, j, k) - cos(et, i, j, k)) for j, i, k in itertools.product(range(n), repeat=3)) / n**3


def reference_rkd(f_s, f_t, eps=1e-12):
    """The authors' RkdDistance / RKdAngle (lenscloth/RKD metric/loss.py, as in mdistiller), written out."""
    def ref_pdist(e):
        e_square = e.pow(2).sum(dim=1)
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res
    t_d = ref_pdist(f_t)
    t_d = t_d / t_d[t_d > 0].mean()
    d = ref_pdist(f_s)
    d = d / d[d > 0].mean()
    td = f_t.unsqueeze(0) - f_t.unsqueeze(1)
    nt = F.normalize(td, p=2, dim=2)
    sd = f_s.unsqueeze(0) - f_s.unsqueeze(1)
    ns = F.normalize(sd, p=2, dim=2)
    return (F.smooth_l1_loss(d, t_d), F.smooth_l1_loss(torch.bmm(ns, ns.transpose(1, 2)).view(-1),
                                                        torch.bmm(nt, nt.transpose(1, 2)).view(-1)))


# ---------------------------------------------------------------------------------------- values
def test_distance_by_hand_on_a_3_4_5_triangle_against_an_equilateral_one():
    # student distances 3, 4, 5 (each twice off the diagonal): mean 4 -> 0.75, 1, 1.25; teacher all 1.
    # off-diagonal differences -0.25 (x2), 0 (x2), 0.25 (x2), |x| < 1 so 0.5 x^2 = 0.03125 each; the
    # diagonal (0 on both sides) counts: 4 * 0.03125 / 9 entries
    assert rkd_distance_loss(RIGHT, EQUI).item() == pytest.approx(0.125 / 9, rel=1e-9)
    assert pdist(RIGHT)[0].tolist() == pytest.approx([0.0, 3.0, 4.0])


def test_angle_by_hand_on_a_3_4_5_triangle_against_an_equilateral_one():
    # cosines at the corners: A=(0,0): 0 (right angle); B=(3,0): <(-3,0),(-3,4)>/(3*5) = 0.6;
    # C=(0,4): <(0,-4),(3,-4)>/(4*5) = 0.8; equilateral: 0.5 everywhere. Each appears twice (i,k and
    # k,i) among the 27 (anchor, i, k); i = k gives 1 on both sides, i or k = anchor 0 on both sides.
    # 0.5 * 2 * (0.5^2 + 0.1^2 + 0.3^2) / 27
    assert rkd_angle_loss(RIGHT, EQUI).item() == pytest.approx(0.35 / 27, rel=1e-9)


def test_four_points_with_differences_past_the_huber_kink():
    # collinear 0, 1, 2, 30 against a unit square: normalised distances differ by more than 1
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [30.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    # by hand: student mean distance (1+2+30+1+29+28)/6 = 91/6, e.g. psi(0,3) = 30*6/91 = 1.978;
    # teacher mean (4 + 2*sqrt2)/6, psi(0,3) = 6/(4+2sqrt2) = 0.8787 (a difference > 1 would be linear)
    assert loop_distance(s, t) == pytest.approx(rkd_distance_loss(s, t).item(), rel=1e-9)
    assert loop_angle(s, t) == pytest.approx(rkd_angle_loss(s, t).item(), rel=1e-9)
    far = torch.tensor([[0.0, 0.0], [0.0, 0.1], [0.1, 0.0], [50.0, 50.0]], dtype=torch.float64)
    d_far = pdist(far) / pdist(far)[pdist(far) > 0].mean()
    d_t = pdist(t) / pdist(t)[pdist(t) > 0].mean()
    assert (d_far - d_t).abs().max() > 1  # the linear branch is exercised
    assert loop_distance(far, t) == pytest.approx(rkd_distance_loss(far, t).item(), rel=1e-9)


def test_random_batches_match_the_loops_and_the_authors_expression():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 9, generator=g, dtype=torch.float64)
    d, a = rkd_distance_loss(s, t), rkd_angle_loss(s, t)  # different widths: no adapter needed
    assert d.item() == pytest.approx(loop_distance(s, t), rel=1e-9)
    assert a.item() == pytest.approx(loop_angle(s, t), rel=1e-9)
    ref_d, ref_a = reference_rkd(s.float(), t.float())
    assert rkd_distance_loss(s.float(), t.float()).item() == pytest.approx(ref_d.item(), rel=1e-6)
    assert rkd_angle_loss(s.float(), t.float()).item() == pytest.approx(ref_a.item(), rel=1e-6)


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_a_teacher_wider_than_the_batch_gives_the_authors_angles(dtype, rel):
    # the teacher side goes through span_coordinates (N x N instead of N x D); ReLU'd features with a
    # large common offset (cancellation-prone), an exact duplicate of row 0 and an all-equal batch
    g = torch.Generator().manual_seed(1)
    s = torch.randn(12, 7, generator=g, dtype=dtype)
    t = (torch.randn(12, 300, generator=g, dtype=dtype) + 0.5).relu() + 20.0
    t[5] = t[0]
    ref_a = reference_rkd(s, t)[1]
    assert rkd_angle_loss(s, t).item() == pytest.approx(ref_a.item(), rel=rel)
    if dtype == torch.float64:  # the loops without the duplicate (their cosine divides by its 0 distance)
        keep = [i for i in range(12) if i != 5]
        assert rkd_angle_loss(s[keep], t[keep]).item() == pytest.approx(loop_angle(s[keep], t[keep]), rel=1e-9)
    flat = torch.ones(12, 300, dtype=dtype)  # every difference 0: every cosine 0, as in the reference
    assert rkd_angle_loss(s, flat).item() == pytest.approx(reference_rkd(s, flat)[1].item(), rel=1e-12)


def test_span_coordinates_keep_distances_and_mark_equal_rows():
    g = torch.Generator().manual_seed(2)
    e = torch.randn(10, 64, generator=g, dtype=torch.float64)
    e[7] = e[3]
    coords, same = span_coordinates(e)
    assert coords.shape == (10, 10) and coords.dtype == e.dtype
    assert torch.allclose(torch.cdist(coords, coords), torch.cdist(e, e), atol=1e-10)
    expected = torch.eye(10, dtype=torch.bool)
    expected[3, 7] = expected[7, 3] = True
    assert torch.equal(same, expected)


def test_embeddings_pool_maps_and_flatten_the_rest():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(rkd_embedding(f), f.mean((2, 3)))
    tokens = torch.randn(2, 3, 4)
    assert torch.equal(rkd_embedding(tokens), tokens.reshape(2, 12))
    # a map loss equals the loss of its pooled vectors
    s, t = torch.randn(5, 4, 3, 3), torch.randn(5, 7, 2, 2)
    assert rkd_angle_loss(s, t).item() == pytest.approx(rkd_angle_loss(s.mean((2, 3)), t.mean((2, 3))).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------- gradients
def test_gradcheck_both_terms_float64():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: rkd_distance_loss(x, t), (s,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: rkd_angle_loss(x, t), (s,), eps=1e-6, atol=1e-6)
    m = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)  # through the pooling
    assert torch.autograd.gradcheck(lambda x: rkd_distance_loss(x, t[:4]) + rkd_angle_loss(x, t[:4]), (m,), eps=1e-6, atol=1e-6)


def test_no_gradient_reaches_the_teacher():
    s = torch.randn(6, 3, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    loss = rkd_distance_loss(s, t) + rkd_angle_loss(s, t)
    assert torch.autograd.grad(loss, t, allow_unused=True)[0] is None
    loss.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- invariances
def _orthogonal(d, seed, reflect=False):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    if reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_unchanged_under_scaling_rotation_reflection_and_translation(side):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
    base = (rkd_distance_loss(s, t).item(), rkd_angle_loss(s, t).item())
    assert min(base) > 1e-3  # not trivially zero
    e = s if side == "student" else t
    d = e.size(1)
    shift = torch.randn(1, d, generator=g, dtype=torch.float64) * 10
    for changed in (e * 3.7, e * 0.01, e @ _orthogonal(d, 3), e @ _orthogonal(d, 4, reflect=True), e + shift,
                    (e @ _orthogonal(d, 5)) * 2.5 - shift):
        pair = (changed, t) if side == "student" else (s, changed)
        assert rkd_distance_loss(*pair).item() == pytest.approx(base[0], rel=1e-7, abs=1e-12)
        assert rkd_angle_loss(*pair).item() == pytest.approx(base[1], rel=1e-7, abs=1e-12)


def test_identical_relations_give_zero():
    s = torch.randn(5, 3, dtype=torch.float64)
    t = torch.cat([s @ _orthogonal(3, 6) * 4 + 1, torch.zeros(5, 2, dtype=torch.float64)], 1)  # same shape, wider
    assert rkd_distance_loss(s, t).item() == pytest.approx(0, abs=1e-12)
    assert rkd_angle_loss(s, t).item() == pytest.approx(0, abs=1e-12)


# ---------------------------------------------------------------------------------------- edge cases, errors
def test_batches_of_one_and_two_are_exact_documented_zeros():
    for n in (1, 2):
        s = torch.randn(n, 3, requires_grad=True)
        t = torch.randn(n, 5)
        for fn in (rkd_distance_loss, rkd_angle_loss):
            value = fn(s, t)
            assert value.item() == 0.0 and value.requires_grad
            (grad,) = torch.autograd.grad(value, s)
            assert torch.equal(grad, torch.zeros_like(grad))


def test_coincident_student_points_stay_finite():
    s = torch.zeros(4, 3, requires_grad=True)  # a dead layer: every distance is the clamp, sqrt(1e-12)
    t = torch.randn(4, 3)
    loss = rkd_distance_loss(s, t) + rkd_angle_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_bad_shapes_and_parameters_are_one_line_errors():
    with pytest.raises(ConfigError, match="different batch sizes") as e:
        rkd_distance_loss(torch.randn(4, 3), torch.randn(5, 3))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"needs a batch of embeddings"):
        rkd_angle_loss(torch.randn(4), torch.randn(4, 3))
    distill = load_recipe("digits-mlp").distill
    for bad, match in (({"distance_weight": -1}, "distance_weight: must be a finite number >= 0"),
                       ({"angle_weight": float("inf")}, "angle_weight: must be a finite number >= 0"),
                       ({"angle_weight": float("nan")}, "angle_weight"),
                       ({"student_layer": ""}, "student_layer: must be a module name"),
                       ({"distance": 25}, "unknown key")):
        with pytest.raises(ConfigError, match=match) as e:
            build_method("rkd", distill, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no nn.Linear") as e:
        FeatureTap(nn.Sequential(nn.Conv2d(1, 2, 3)), RKD().needs.student_features, "student")
    assert "\n" not in str(e.value)


def test_registry_entry_defaults_and_weights():
    distill = load_recipe("digits-mlp").distill
    m = build_method("rkd", distill, {})
    assert "rkd" in METHODS.names()
    assert m.term_weights() == {"hard": distill.hard_weight, "soft": distill.soft_weight, "rkd_distance": 25.0, "rkd_angle": 50.0}
    assert m.needs.teacher_logits and not m.needs.logits_only  # the teacher runs online on each batch
    assert m.state_dict() == {}  # nothing to resume: no parameter, buffer or bank
    info = m.epoch_info()
    assert info["distance_weight"] == 25.0 and info["angle_weight"] == 50.0


def test_total_follows_soft_weight_and_zero_soft_weight_is_mdistillers_objective():
    g = torch.Generator().manual_seed(3)
    logits_s, logits_t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    fs, ft = torch.randn(6, 5, generator=g), torch.randn(6, 8, generator=g)
    m = RKD(RKDParams(student_layer="a", teacher_layer="b"), "hinton", 4.0, 1.0, 0.0)
    terms = m(Batch(torch.zeros(6, 1), y), Outputs(logits_s, {"a": fs}), Outputs(logits_t, {"b": ft}))
    ref_d, ref_a = reference_rkd(fs, ft)
    expected = F.cross_entropy(logits_s, y) + 25 * ref_d + 50 * ref_a  # mdistiller's RKD objective
    assert m.total(terms).item() == pytest.approx(expected.item(), rel=1e-6)
    m.soft_weight = 0.5
    kd = F.kl_div(F.log_softmax(logits_s / 4, 1), F.log_softmax(logits_t / 4, 1), reduction="batchmean", log_target=True) * 16
    assert m.total(terms).item() == pytest.approx((expected + 0.5 * kd).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------- the last-Linear tap
class HeadFirst(nn.Module):
    """Registers its classifier before its body: the tap must follow the forward, not the registration."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.body = nn.Sequential(nn.Linear(5, 4), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


def test_penultimate_tap_records_the_classifiers_input_and_leaves_no_hook():
    model = HeadFirst()
    x = torch.randn(2, 5)
    with FeatureTap(model, [PENULTIMATE], "student") as tap:
        with pytest.raises(ConfigError, match="no nn.Linear of the student ran"):
            tap[PENULTIMATE]
        model(x)
        assert tap.penultimate_layer == "head" and torch.equal(tap[PENULTIMATE], model.body(x))
        copy.deepcopy(model)(torch.randn(3, 5))  # a copy of the model does not report here
        assert tap[PENULTIMATE].size(0) == 2
    assert not tap.active
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------- through the Trainer
# T and weights pinned: the formulas below write them out
KD_SETTINGS = ["distill.temperature=3", "distill.hard_weight=0.5", "distill.soft_weight=0.5"]
MLP = ["teacher.model.hidden=[32]", "student.model.hidden=[12]", "student.train.epochs=2", *KD_SETTINGS]
CNN = ["teacher.model={name: cnn, channels: [8, 16]}", "student.model={name: cnn, channels: [4, 4]}", "student.train.epochs=1"]


def _models(overrides, data):
    recipe = load_recipe("digits-mlp", overrides)
    return recipe, build_role_model(recipe, "teacher", data), build_role_model(recipe, "student", data)


def _first_step(trainer, digits, student, teacher, method_weights):
    """The first training step's total written out on copies of the models (penultimate = net[:-1])."""
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x, y = digits.train.x[idx], digits.train.y[idx]
    teacher.eval()  # the teacher's hidden layer is followed by dropout, the identity in eval mode
    h_s = student.net[:-1](x.flatten(1))
    s = student.net[-1](h_s)
    with torch.no_grad():
        h_t = teacher.net[:-1](x.flatten(1)).clone()
        t = teacher.net[-1](h_t)
    hard, soft, wd, wa = method_weights
    kd = F.kl_div(F.log_softmax(s / 3, 1), F.log_softmax(t / 3, 1), reduction="batchmean", log_target=True) * 9
    ref_d, ref_a = reference_rkd(h_s, h_t)
    return (hard * F.cross_entropy(s, y) + soft * kd + wd * ref_d + wa * ref_a).detach(), ref_d.detach(), ref_a.detach()


def test_default_penultimate_layer_through_the_trainer(digits):
    recipe, teacher, student = _models(MLP, digits)
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)
    method = build_method("rkd", recipe.distill, {})
    with FrozenTeacher(teacher) as frozen:
        trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=frozen)
        assert trainer.cached_logits is None  # the teacher runs online for its embeddings
        expected, ref_d, ref_a = _first_step(trainer, digits, ref_s, ref_t, (0.5, 0.5, 25.0, 50.0))
        row = trainer.train_epoch()[0]
        assert float(row[0]) == pytest.approx(float(expected), rel=1e-5)
        assert float(row[3]) == pytest.approx(float(ref_d), rel=1e-5) and float(row[4]) == pytest.approx(float(ref_a), rel=1e-5)
        assert trainer.student_tap.penultimate_layer == "net.2" and trainer.teacher_tap.penultimate_layer == "net.3"
        trainer.start_epoch = 2
        (result,) = trainer.fit()
    assert {"loss_rkd_distance", "loss_rkd_angle", "distance_weight", "angle_weight"} <= set(result.history[-1])
    assert all(math.isfinite(r["loss_total"]) for r in result.history)
    for k, v in teacher.state_dict().items():  # the teacher is never trained
        assert torch.equal(v, before[k])
    assert teacher.training  # handed back as given
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_named_layers_through_the_trainer_equal_the_default_on_mlps(digits):
    # net.1 (the ReLU) outputs the last Linear's input in a one-hidden-layer MLP (the teacher's
    # dropout after it is the identity in eval mode)
    recipe, teacher, student = _models(MLP, digits)
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)
    method = build_method("rkd", recipe.distill, {"student_layer": "net.1", "teacher_layer": "net.1", "angle_weight": 10})
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    expected, ref_d, ref_a = _first_step(trainer, digits, ref_s, ref_t, (0.5, 0.5, 25.0, 10.0))
    row = trainer.train_epoch()[0]
    trainer.close()
    assert float(row[0]) == pytest.approx(float(expected), rel=1e-5)
    assert float(row[4]) == pytest.approx(float(ref_a), rel=1e-5)
    state = io.BytesIO()
    torch.save(trainer.state_dict(), state)
    state.seek(0)
    assert torch.load(state, weights_only=True)["method_state"] == {}  # resume: nothing of RKD's to restore


def test_named_conv_maps_are_pooled_and_typos_fail_in_one_line(digits):
    recipe, teacher, student = _models(CNN, digits)
    method = RKD(RKDParams(student_layer="features.5", teacher_layer="features.2"), "hinton", 3.0, 0.5, 0.5)
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x = digits.train.x[idx]
    with torch.no_grad():
        fs, ft = student.features(x).mean((2, 3)), teacher.features[:3](x).mean((2, 3))
    row = trainer.train_epoch()[0]
    trainer.close()
    ref_d, ref_a = reference_rkd(fs, ft)
    assert float(row[3]) == pytest.approx(float(ref_d), rel=1e-4) and float(row[4]) == pytest.approx(float(ref_a), rel=1e-4)
    default = build_trainer(student, RKD(), digits, recipe.student.train, teacher=FrozenTeacher(teacher))  # the CNNs' classifier inputs
    default.close()
    with pytest.raises(ConfigError, match="closest"):  # a typo in a named layer
        build_trainer(student, RKD(RKDParams(student_layer="feature.5")), digits, recipe.student.train, teacher=FrozenTeacher(teacher))
