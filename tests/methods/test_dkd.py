"""DKD (Zhao et al. 2022) against the paper's equations written out, its decomposition of KD,
finite-difference gradients, the warm-up, bad parameters, and one run through the Trainer."""

import copy
import decimal
import io
import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.methods import METHODS, Batch, Outputs, build_method
from kdlab.methods.dkd import DKD, DKDParams, dkd_terms, warmup_factor
from kdlab.pipeline import build_role_model, prepare_data
from kdlab.recipes import load_recipe
from kdlab.teacher import FrozenTeacher
from kdlab.train.build import build_trainer
from kdlab.train.weights import WeightPlan

D = torch.float64


def paper(s, t, y, T):
    """Eq. (1)-(4) of the paper, sample by sample, with plain Python sums (per-sample TCKD, NCKD, KD)."""
    out = []
    for zs, zt, c in zip(s.tolist(), t.tolist(), y.tolist()):
        ps = [math.exp(v / T) for v in zs]
        pt = [math.exp(v / T) for v in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        bs, bt = [ps[c], 1 - ps[c]], [pt[c], 1 - pt[c]]
        tckd = sum(a * math.log(a / b) for a, b in zip(bt, bs))
        hs = [v / (1 - ps[c]) for i, v in enumerate(ps) if i != c]
        ht = [v / (1 - pt[c]) for i, v in enumerate(pt) if i != c]
        nckd = sum(a * math.log(a / b) for a, b in zip(ht, hs))
        kd = sum(a * math.log(a / b) for a, b in zip(pt, ps))
        out.append((tckd * T * T, nckd * T * T, kd * T * T, pt[c]))
    return out


S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, -2.0, 1.5], [-1.0, 3.0, 0.0, 0.2]], dtype=D)
TT = torch.tensor([[3.0, 0.0, -0.5, 1.0], [-0.2, 0.4, -1.0, 2.5], [0.5, 2.0, 1.0, -1.0]], dtype=D)
Y = torch.tensor([0, 3, 1])


def test_hand_checkable_two_class_value():
    # two classes: NCKD is a KL between one-point distributions (0); TCKD is the whole KD
    s, t, y = torch.tensor([[0.0, 0.0]], dtype=D), torch.tensor([[math.log(3.0), 0.0]], dtype=D), torch.tensor([0])
    tckd, nckd = dkd_terms(s, t, y, 1.0)
    assert float(nckd) == 0.0
    assert float(tckd) == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5), abs=1e-12)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_terms_equal_the_papers_equations(T):
    tckd, nckd = dkd_terms(S, TT, Y, T, reduction="none")
    ref = paper(S, TT, Y, T)
    for i, (a, b, _, _) in enumerate(ref):
        assert float(tckd[i]) == pytest.approx(a, abs=1e-12)
        assert float(nckd[i]) == pytest.approx(b, abs=1e-12)
    mt, mn = dkd_terms(S, TT, Y, T)
    assert float(mt) == pytest.approx(sum(r[0] for r in ref) / 3, abs=1e-12)
    assert float(mn) == pytest.approx(sum(r[1] for r in ref) / 3, abs=1e-12)


def test_kd_decomposes_into_tckd_plus_teacher_weighted_nckd():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g, dtype=D) * 3, torch.randn(64, 10, generator=g, dtype=D) * 3
    y = torch.randint(0, 10, (64,), generator=g)
    for T in (1.0, 4.0):
        tckd, nckd = dkd_terms(s, t, y, T, reduction="none")
        kd = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="none", log_target=True).sum(1) * T * T
        pt_teacher = F.softmax(t / T, 1).gather(1, y.view(-1, 1)).squeeze(1)
        pt_student = F.softmax(s / T, 1).gather(1, y.view(-1, 1)).squeeze(1)
        assert torch.allclose(kd, tckd + (1 - pt_teacher) * nckd, atol=1e-6, rtol=0)  # Eq. (4): the teacher's p_t
        assert not torch.allclose(kd, tckd + (1 - pt_student) * nckd, atol=1e-6, rtol=0)  # not the student's
    ref = paper(S, TT, Y, 4.0)
    assert all(abs(k - (a + (1 - p) * b)) < 1e-9 for a, b, k, p in ref)


def mdistiller_terms(s, t, y, T):
    """(TCKD, NCKD) as mdistiller's dkd_loss computes them (its -1000·mask softmax and log of summed probabilities), written out."""
    gt = torch.zeros_like(s).scatter_(1, y.view(-1, 1), 1).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    cat = lambda p: torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)  # noqa: E731
    bs, bt = cat(ps), cat(pt)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T**2 / y.shape[0]
    nckd = F.kl_div(F.log_softmax(s / T - 1000.0 * gt, 1), F.softmax(t / T - 1000.0 * gt, 1), reduction="sum") * T**2 / y.shape[0]
    return tckd, nckd


def test_exact_masking_agrees_with_mdistillers_minus_1000():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(32, 7, generator=g, dtype=D), torch.randn(32, 7, generator=g, dtype=D)
    y = torch.randint(0, 7, (32,), generator=g)
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    mt, mn = mdistiller_terms(s, t, y, 4.0)
    assert float(tckd) == pytest.approx(float(mt), abs=1e-12) and float(nckd) == pytest.approx(float(mn), abs=1e-12)
    assert float(1.0 * tckd + 8.0 * nckd) == pytest.approx(float(1.0 * mt + 8.0 * mn), abs=1e-10)
    # exact where the -1000 margin is not: non-target logits more than 1000 below the target's, where
    # mdistiller's masked target (z_t - 1000) still dominates the "non-target" softmax
    s, t, y = torch.tensor([[0.0, -2000.0, -1995.0]], dtype=D), torch.tensor([[0.0, -2001.0, -2004.0]], dtype=D), torch.tensor([0])
    _, nckd = dkd_terms(s, t, y, 1.0)
    ref = F.kl_div(F.log_softmax(torch.tensor([[0.0, 5.0]], dtype=D), 1), F.log_softmax(torch.tensor([[0.0, -3.0]], dtype=D), 1),
                   reduction="sum", log_target=True)  # the non-target softmax is shift-invariant
    assert float(nckd) == pytest.approx(float(ref), abs=1e-12) and float(ref) > 0.1
    assert abs(float(mdistiller_terms(s, t, y, 1.0)[1]) - float(ref)) > 0.1  # it gives ~0 here


def test_gradcheck_and_no_teacher_gradient():
    s = S.clone().requires_grad_(True)
    t = TT.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: sum(dkd_terms(a, TT, Y, 2.0)), (s,))
    assert torch.autograd.gradcheck(lambda a: dkd_terms(a, TT, Y, 4.0)[1], (s,))
    tckd, nckd = dkd_terms(s, t, Y, 4.0)
    (tckd + nckd).backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


def test_warmup_factor_per_epoch_and_term_weights():
    assert [warmup_factor(e, 4) for e in (1, 2, 3, 4, 5, 9)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0
    m = DKD(DKDParams(alpha=2.0, beta=8.0, warmup=4), temperature=4.0, hard_weight=1.0)
    seen = []
    for e in range(1, 6):
        WeightPlan().apply([m], e)
        seen.append(m.weights())
    assert seen[0] == {"hard": 1.0, "tckd": 0.5, "nckd": 2.0}
    assert seen[3] == seen[4] == {"hard": 1.0, "tckd": 2.0, "nckd": 8.0}
    WeightPlan().apply([m], 2)
    assert m.epoch_info()["warmup_factor"] == 0.5
    # total = CE + factor·(α·TCKD + β·NCKD)
    terms = m(Batch(S.float(), Y), Outputs(S.float()), Outputs(TT.float()))
    tckd, nckd = dkd_terms(S.float(), TT.float(), Y, 4.0)
    expected = F.cross_entropy(S.float(), Y) + 0.5 * (2.0 * tckd + 8.0 * nckd)
    assert float(m.total(terms)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("params, match", [
    (dict(alpha=-1.0), r"distill\.dkd\.alpha: must be a finite number >= 0"),
    (dict(beta=float("nan")), r"distill\.dkd\.beta: must be a finite number >= 0"),
    (dict(beta=float("inf")), r"distill\.dkd\.beta"),
    (dict(warmup=-2), r"distill\.dkd\.warmup: must be an integer"),
])
def test_bad_parameters_are_one_line_errors(params, match):
    with pytest.raises(ConfigError, match=match) as e:
        DKD(DKDParams(**params))
    assert "\n" not in str(e.value)


def test_bad_inputs_are_one_line_errors():
    for kwargs, match in [
        (dict(temperature=0.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
        (dict(hard_weight=-0.5), "hard_weight"),
    ]:
        with pytest.raises(ConfigError, match=match):
            DKD(DKDParams(), **kwargs)
    with pytest.raises(ConfigError, match="one shape"):
        dkd_terms(S, TT[:, :3], Y, 4.0)
    with pytest.raises(ConfigError, match="class index"):
        dkd_terms(S, TT, F.one_hot(Y, 4).to(D), 4.0)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        dkd_terms(S[:, :1], TT[:, :1], torch.zeros(3, dtype=torch.long), 4.0)
    with pytest.raises(ConfigError, match="needs a teacher"):
        DKD()(Batch(S, Y), Outputs(S), None)


def test_registry_entry_reads_the_recipe():
    recipe = load_recipe("digits-mlp", ["distill.method=dkd", "distill.temperature=2.0", "distill.hard_weight=1.0"])
    m = build_method("dkd", recipe.distill, {"beta": 4.0, "warmup": 3})
    assert isinstance(m, DKD) and (m.temperature, m.hard_weight, m.alpha, m.beta, m.warmup) == (2.0, 1.0, 1.0, 4.0, 3)
    assert "dkd" in METHODS.names()
    with pytest.raises(ConfigError):
        build_method("dkd", recipe.distill, {"gamma": 1.0})


def test_state_round_trip():
    m = DKD(DKDParams(warmup=5))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    DKD(DKDParams(warmup=5)).load_state_dict(torch.load(buf, weights_only=True))  # stateless: nothing to lose


def test_trains_through_the_trainer_on_digits_with_cached_teacher_logits():
    data = prepare_data(load_recipe("digits-mlp"))
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[32]", "student.model.hidden=[12]", "student.train.epochs=2"])
    teacher, student = build_role_model(recipe, "teacher", data), build_role_model(recipe, "student", data)
    method = DKD(DKDParams(warmup=2), temperature=4.0, hard_weight=1.0)
    reference = copy.deepcopy(student)
    trainer = build_trainer(student, method, data, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    assert trainer.cached_logits is not None and trainer.fast is None  # logits only: cached, through autograd
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x, y = data.train.x[idx], data.train.y[idx]
    s = reference(x)
    with torch.no_grad():
        t = teacher(x)
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    WeightPlan().apply([method], 1)
    expected = F.cross_entropy(s, y) + 0.5 * (tckd + 8.0 * nckd)
    row = trainer.train_epoch()[0]
    assert float(row[0]) == pytest.approx(float(expected.detach()), rel=1e-4)
    before = copy.deepcopy(student.state_dict())
    trainer2 = build_trainer(student, DKD(DKDParams(warmup=2)), data, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    (result,) = trainer2.fit()
    assert [h["warmup_factor"] for h in result.history] == [0.5, 1.0]
    assert "loss_tckd" in result.history[0] and "loss_nckd" in result.history[0]
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())


def _binary_reference(s, t, y, T):
    """Per-sample TCKD·T², KL([p_t, 1 − p_t] teacher ‖ student), in 50-digit decimals: 1 − p_t taken directly."""
    decimal.getcontext().prec = 50
    out = []
    for zs, zt, c in zip(s.tolist(), t.tolist(), y.tolist()):
        def p_target(z):
            e = [(decimal.Decimal(v) / decimal.Decimal(T)).exp() for v in z]
            return e[c] / sum(e)
        ps, pt = p_target(zs), p_target(zt)
        kl = pt * (pt / ps).ln() + (1 - pt) * ((1 - pt) / (1 - ps)).ln()
        out.append(float(kl * decimal.Decimal(T) ** 2))
    return torch.tensor(out, dtype=D)


def _tckd_gradient(s, t, y, T):
    """Closed-form d(TCKD·T²)/ds: T·(p_t^S − p_t^T) at the target, −T·(p_t^S − p_t^T)·p̂_j^S elsewhere."""
    s, t = s.double(), t.double()
    gt = F.one_hot(y, s.size(1)).bool()
    ps_t, pt_t = F.softmax(s / T, 1)[gt], F.softmax(t / T, 1)[gt]
    p_hat = F.softmax((s / T).masked_fill(gt, float("-inf")), 1)
    d = (ps_t - pt_t).unsqueeze(1)
    return T * torch.where(gt, d, -d * p_hat)


def _small_target_logits(shift, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g) * 3, torch.randn(64, 10, generator=g) * 3
    y = torch.randint(0, 10, (64,), generator=g)
    rows = torch.arange(64)
    s[rows, y] -= shift; t[rows, y] -= shift  # p_t ~ e^-shift: log(1 − p_t) ~ −p_t, near zero
    return s.to(dtype), t.to(dtype), y


@pytest.mark.parametrize("shift", [12.0, 20.0])
def test_tckd_is_accurate_and_non_negative_when_the_target_probability_is_small(shift):
    # lse(non-target) − lse(all) loses log(1 − p_t) ~ −p_t to rounding (float32: TCKD off by up to ~1000x, negative
    # on about a third of the samples); log1p(−p_t) keeps it
    s, t, y = _small_target_logits(shift)
    tckd, _ = dkd_terms(s, t, y, 1.0, reduction="none")
    ref = _binary_reference(s, t, y, 1.0)
    assert (tckd >= 0).all()
    torch.testing.assert_close(tckd.double(), ref, rtol=1e-3, atol=0)


def test_tckd_gradient_is_finite_and_equals_the_reference_on_both_sides_of_one_half():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 5, generator=g, dtype=D), torch.randn(6, 5, generator=g, dtype=D)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    s[0, 0] += 60; t[0, 0] += 60  # p_t -> 1: log(1 − p_t) only through the lse form (log1p(−1) = −inf)
    s[1, 1] += 2.0; t[2, 2] += 2.0  # p_t around and above one half for one side
    s[3, 3] -= 25; t[3, 3] -= 25  # p_t ~ 1e-11: the log1p form
    s_leaf = s.clone().requires_grad_()
    tckd, _ = dkd_terms(s_leaf, t, y, 2.0, reduction="none")
    (grad,) = torch.autograd.grad(tckd.sum(), s_leaf)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(tckd.detach(), _binary_reference(s, t, y, 2.0), rtol=1e-9, atol=1e-18)
    torch.testing.assert_close(grad, _tckd_gradient(s, t, y, 2.0), rtol=1e-9, atol=1e-15)
    assert torch.autograd.gradcheck(lambda z: dkd_terms(z, t, y, 2.0)[0], (s.clone().requires_grad_(),))
    # float32, p_t -> 1 and p_t tiny in one batch: finite values and gradients
    s32 = s.float().requires_grad_()
    tckd32, _ = dkd_terms(s32, t.float(), y, 2.0)
    tckd32.backward()
    assert torch.isfinite(tckd32) and torch.isfinite(s32.grad).all()


def test_tckd_equals_the_lse_form_where_that_one_is_accurate():
    # moderate probabilities: the old lse(non-target) − lse(all) form and its gradients, to float64 precision
    s, t = S.clone().requires_grad_(), TT.clone()
    tckd, _ = dkd_terms(s, t, Y, 4.0, reduction="none")
    def old(z):
        z = z / 4.0
        gt = F.one_hot(Y, 4).bool()
        lp = z.gather(1, Y.view(-1, 1)).squeeze(1) - torch.logsumexp(z, 1)
        return lp, torch.logsumexp(z.masked_fill(gt, float("-inf")), 1) - torch.logsumexp(z, 1)
    (a, b), (c, d) = old(t), old(s)
    ref = (a.exp() * (a - c) + b.exp() * (b - d)) * 16
    torch.testing.assert_close(tckd, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(torch.autograd.grad(tckd.sum(), s)[0], torch.autograd.grad(ref.sum(), s)[0], rtol=1e-10, atol=1e-14)
