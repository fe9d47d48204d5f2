"""CRD: NCE against memory banks, checked against the reference formula written out."""

import copy
import io

import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.features import PENULTIMATE
from kdlab.methods import Batch, Outputs, build_method
from kdlab.methods.crd import CRD, CRDParams, momentum_update, nce_loss
from kdlab.pipeline import build_role_model, prepare_data
from kdlab.recipes import load_recipe
from kdlab.teacher import FrozenTeacher
from kdlab.train.build import build_trainer


def _crd(**kw):
    p = dict(student_layer="a", teacher_layer="b", feat_dim=4, negatives=5, num_samples=10)
    p.update(kw)
    return CRD(CRDParams(**p), seed=3)


def test_nce_loss_equals_the_formula_written_out():
    x = torch.tensor([[0.5, 0.1, 0.2], [0.3, 0.4, 0.05]], dtype=torch.float64)
    n, K, B = 10, 2, 2
    c = K / n
    exp = 0.0
    for b in range(B):
        exp += torch.log(x[b, 0] / (x[b, 0] + c + 1e-7))
        for k in range(1, K + 1):
            exp += torch.log(c / (x[b, k] + c + 1e-7))
    assert float(nce_loss(x, n)) == pytest.approx(float(-exp / B), rel=1e-12)


def test_momentum_update_renormalises():
    mem = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    v = torch.tensor([[0.0, 1.0]])
    momentum_update(mem, torch.tensor([0]), v, 0.5)
    r = 0.5 ** 0.5
    assert torch.allclose(mem[0], torch.tensor([r, r]))
    assert torch.allclose(mem[1:], torch.tensor([[0.0, 1.0], [0.6, 0.8]]))


def test_loss_value_memory_and_z_against_reference_and_no_teacher_grad():
    m = _crd()
    fs = torch.randn(3, 6, dtype=torch.float32, requires_grad=True)
    ft = torch.randn(3, 7, requires_grad=True)
    idx = torch.tensor([1, 4, 7])
    m.crd_loss(fs, ft, idx)  # creates heads; first real call sets Z
    assert (m.z > 0).all()
    ms, mt, z = m.memory_s.clone(), m.memory_t.clone(), m.z.clone()
    g = torch.Generator(); g.set_state(m.generator.get_state())
    loss = m.crd_loss(fs, ft, idx)
    # reference, written out
    sample = torch.randint(0, 10, (3, 6), generator=g); sample[:, 0] = idx
    vs = m.embed_s(fs); vs = vs / vs.norm(dim=1, keepdim=True)
    vt = m.embed_t(ft.detach()); vt = vt / vt.norm(dim=1, keepdim=True)
    ps = torch.stack([torch.exp(mt[sample[b]] @ vs[b] / 0.07) for b in range(3)]) / z[0].float()
    pt = torch.stack([torch.exp(ms[sample[b]] @ vt[b] / 0.07) for b in range(3)]) / z[1].float()
    def nce(p):
        c = 5 / 10
        return -(torch.log(p[:, 0] / (p[:, 0] + c + 1e-7)).sum() + torch.log(c / (p[:, 1:] + c + 1e-7)).sum()) / 3
    assert float(loss.detach()) == pytest.approx(float((nce(ps) + nce(pt)).detach()), rel=1e-5)
    new = 0.5 * ms[idx] + 0.5 * vs.detach()
    assert torch.allclose(m.memory_s[idx], new / new.norm(dim=1, keepdim=True), atol=1e-6)
    loss.backward()
    assert ft.grad is None and fs.grad is not None and m.embed_t.weight.grad is not None


def test_negatives_capped_by_dataset_size(monkeypatch):
    import kdlab.methods.crd as crd
    seen = []
    real = crd.contrast_logits
    monkeypatch.setattr(crd, "contrast_logits", lambda v, mem, idx, T: seen.append(idx.shape) or real(v, mem, idx, T))
    m = _crd(negatives=16384, num_samples=4)
    m.crd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 3]))
    assert seen == [(2, 4), (2, 4)]  # K = N - 1 = 3 negatives + the positive


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_whole_bank_product_and_gather_give_the_same_scores_and_gradients(dtype, monkeypatch):
    import kdlab.methods.crd as crd
    g = torch.Generator().manual_seed(0)
    mem = torch.nn.functional.normalize(torch.randn(50, 8, generator=g, dtype=dtype), dim=1)
    idx = torch.randint(0, 50, (4, 7), generator=g)  # repeats included
    v = torch.nn.functional.normalize(torch.randn(4, 8, generator=g, dtype=dtype), dim=1).requires_grad_()
    by_loop = torch.stack([torch.exp(mem[idx[b]] @ v[b] / 0.07) for b in range(4)])
    out = {}
    for dense in (True, False):
        scores = crd.contrast_scores(v, mem, idx, 0.07, dense=dense)
        (grad,) = torch.autograd.grad(scores.log().sum() + scores.sum(), v)
        out[dense] = scores.detach(), grad
    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-5, atol=0)
    for dense in (True, False):
        torch.testing.assert_close(out[dense][0], by_loop.detach(), **tol)
    torch.testing.assert_close(out[True][1], out[False][1], **tol)
    # the default: the whole bank while it is at most DENSE_BANK_FACTOR draws long, the gather beyond
    seen = []
    real_gather = torch.Tensor.gather
    monkeypatch.setattr(torch.Tensor, "gather", lambda self, *a, **k: seen.append("dense") or real_gather(self, *a, **k))
    crd.contrast_scores(v, mem, idx[:, :4], 0.07)  # 50 <= 16 * 4
    crd.contrast_scores(v, mem, idx[:, :3], 0.07)  # 50 > 16 * 3 = 48: the gather
    assert seen == ["dense"]


def test_gradcheck_student_embedding_fixed_memory():
    mem = torch.nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1)
    sample = torch.tensor([[1, 2, 5], [3, 0, 4]])

    def f(v):
        v = v / v.norm(dim=1, keepdim=True)
        p = torch.exp(torch.bmm(mem[sample], v.unsqueeze(2)).squeeze(2) / 0.07) / 40.0
        return nce_loss(p, 6)

    assert torch.autograd.gradcheck(f, (torch.randn(2, 3, dtype=torch.float64, requires_grad=True),))


def test_state_round_trip_with_z_and_rng():
    m = _crd()
    m.crd_loss(torch.randn(3, 6), torch.randn(3, 7), torch.tensor([0, 1, 2]))
    buf = io.BytesIO(); torch.save(m.state_dict(), buf); buf.seek(0)
    m2 = _crd()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(m2.memory_s, m.memory_s) and torch.equal(m2.z, m.z)
    assert torch.equal(m2.embed_s.weight, m.embed_s.weight)
    fs, ft, i = torch.randn(3, 6), torch.randn(3, 7), torch.tensor([4, 5, 6])
    assert float(m.crd_loss(fs, ft, i).detach()) == float(m2.crd_loss(fs, ft, i).detach())


@pytest.mark.parametrize("kw", [dict(weight=-1.0), dict(feat_dim=0), dict(negatives=0), dict(nce_t=0.0),
                                dict(momentum=1.0), dict(num_samples=1), dict(student_layer="")])
def test_bad_params_one_line(kw):
    with pytest.raises(ConfigError) as e:
        _crd(**kw)
    assert "\n" not in str(e.value)


def test_trainer_on_digits_trains_and_saves_heads_and_banks():
    data = prepare_data(load_recipe("digits-mlp"))
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[32]", "student.model.hidden=[12]", "student.train.epochs=2"])
    teacher = build_role_model(recipe, "teacher", data)
    student = build_role_model(recipe, "student", data)
    m = CRD(CRDParams(student_layer="net.1", teacher_layer="net.1", feat_dim=16, negatives=64), seed=0)
    trainer = build_trainer(student, m, data, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    rows = [trainer.train_epoch() for _ in range(4)]  # epoch 2 is harder (the banks now hold real embeddings)
    assert float(rows[-1][:, 3].mean()) < 0.8 * float(rows[0][:, 3].mean())
    state = m.state_dict()
    assert {"embed_s.weight", "embed_t.weight", "memory_s", "memory_t", "z"} <= set(state)
    assert state["memory_s"].size(0) >= len(data.train) and (m.z > 0).all()


def _crd_trainer(data, recipe, teacher, student):
    m = build_method("crd", recipe.distill, {"feat_dim": 16, "negatives": 64})  # default: penultimate features
    return build_trainer(student, m, data, recipe.student.train, seed=5, teacher=FrozenTeacher(teacher))


def test_default_penultimate_banks_sized_by_the_trainer_and_exact_resume():
    data = prepare_data(load_recipe("digits-mlp"))
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[32]", "student.model.hidden=[12]", "student.train.epochs=2"])
    teacher = build_role_model(recipe, "teacher", data)
    student = build_role_model(recipe, "student", data)
    start = copy.deepcopy(student.state_dict())
    trainer = _crd_trainer(data, recipe, teacher, student)
    assert trainer.method.bank_size == len(data.train)  # one row per training sample, filled in by the trainer
    assert trainer.student_tap.names == (PENULTIMATE,)
    trainer.train_epoch()
    trainer.epoch = 1
    buf = io.BytesIO()
    torch.save({"model": student.state_dict(), "trainer": trainer.state_dict()}, buf)
    rows_continuous = trainer.train_epoch()
    trainer.close()

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    student2 = build_role_model(recipe, "student", data)
    assert all(torch.equal(v, start[k]) for k, v in student2.state_dict().items())
    student2.load_state_dict(saved["model"])
    resumed = _crd_trainer(data, recipe, teacher, student2)
    resumed.load_state_dict(saved["trainer"])
    rows_resumed = resumed.train_epoch()
    resumed.close()
    assert torch.allclose(rows_resumed, rows_continuous, rtol=1e-5, atol=1e-6)  # banks, Z, heads and sampler RNG resumed


def _aligned_crd(nce_t):
    """A CRD whose positive bank rows are near the batch's embeddings (cosine ~0.95): e^(<v, m>/T) past float32
    for small T, and a gradient well above float32 round-off (rows equal to v would cancel it)."""
    torch.manual_seed(0)
    m = _crd(nce_t=nce_t)
    fs, ft, idx = torch.randn(3, 6, requires_grad=True), torch.randn(3, 7), torch.tensor([1, 4, 7])
    m.embed_s, m.embed_t = torch.nn.Linear(6, 4), torch.nn.Linear(7, 4)
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        m.memory_t[idx] = normalize(normalize(m.embed_s(fs), dim=1) + 0.15 * torch.randn(3, 4), dim=1)
        m.memory_s[idx] = normalize(normalize(m.embed_t(ft), dim=1) + 0.15 * torch.randn(3, 4), dim=1)
        cos = (m.memory_t[idx] * normalize(m.embed_s(fs), dim=1)).sum(1)
    return m, fs, ft, idx, float(cos.max())


def _crd_reference_float64(m, fs, ft, idx, gen_state, T):
    """The reference (exp scores, Z from this batch, NCE) in float64, where e^(1/T) is finite; loss and d/dfs."""
    g = torch.Generator(); g.set_state(gen_state)
    sample = torch.randint(0, 10, (3, 6), generator=g); sample[:, 0] = idx
    fs64 = fs.detach().double().requires_grad_()
    ws, bs = m.embed_s.weight.detach().double(), m.embed_s.bias.detach().double()
    wt, bt = m.embed_t.weight.detach().double(), m.embed_t.bias.detach().double()
    vs = fs64 @ ws.t() + bs; vs = vs / vs.norm(dim=1, keepdim=True)
    vt = ft.double() @ wt.t() + bt; vt = vt / vt.norm(dim=1, keepdim=True)
    ms, mt = m.memory_s.double(), m.memory_t.double()
    ps = torch.stack([torch.exp(mt[sample[b]] @ vs[b] / T) for b in range(3)])
    pt = torch.stack([torch.exp(ms[sample[b]] @ vt[b] / T) for b in range(3)])
    ps, pt = ps / (ps.detach().mean() * 10), pt / (pt.detach().mean() * 10)
    c = 5 / 10
    def nce(p):
        return -(torch.log(p[:, 0] / (p[:, 0] + c + 1e-7)).sum() + torch.log(c / (p[:, 1:] + c + 1e-7)).sum()) / 3
    loss = nce(ps) + nce(pt)
    (grad,) = torch.autograd.grad(loss, fs64)
    return loss.detach(), grad


@pytest.mark.parametrize("T", [0.005, 0.01, 0.07])
def test_float32_loss_and_gradient_finite_and_equal_to_the_float64_reference_for_small_temperatures(T):
    # e^(1/0.01) overflows float32: the exp-then-divide form gave inf/inf = NaN below nce_t ~ 0.0113
    m, fs, ft, idx, cos = _aligned_crd(T)
    assert (cos / T > 88.8) == (T < 0.0113)  # e^88.8 is past float32's range
    state = m.generator.get_state()
    ref_loss, ref_grad = _crd_reference_float64(m, fs, ft, idx, state, T)
    loss = m.crd_loss(fs, ft, idx)
    assert torch.isfinite(loss) and torch.isfinite(m.z).all() and (m.z > 0).all()
    loss.backward()
    assert torch.isfinite(fs.grad).all() and torch.isfinite(m.embed_s.weight.grad).all()
    assert float(loss.detach()) == pytest.approx(float(ref_loss), rel=1e-4)
    torch.testing.assert_close(fs.grad.double(), ref_grad, rtol=1e-3, atol=1e-3 * float(ref_grad.abs().max()))


def test_temperature_below_the_float64_normaliser_range_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="nce_t") as e:
        _crd(nce_t=0.001)  # Z ~ e^(sqrt(3)/nce_t)·N would overflow even float64
    assert "\n" not in str(e.value)


def test_zero_rows_normalise_to_zero_with_finite_gradients():
    from kdlab.methods.crd import l2norm
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    y = l2norm(x)
    torch.testing.assert_close(y.detach(), torch.tensor([[0.0, 0.0], [0.6, 0.8]]))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()
    mem = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    momentum_update(mem, torch.tensor([0]), torch.tensor([[-0.6, -0.8]]), 0.5)  # m·row + (1 − m)·v = 0
    torch.testing.assert_close(mem, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
