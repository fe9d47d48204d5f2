"""Multi-teacher KD: the mixture target, the four weightings, and a run through the pipeline."""

import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.methods import Batch, Outputs, build_method
from kdlab.methods.base import RunContext
from kdlab.methods.multi_teacher import MultiTeacherKD, MultiTeacherParams, confidence_weights, mixture_logits
from kdlab.pipeline import prepare_data, run_distill
from kdlab.recipes import load_recipe
from kdlab.teacher import FrozenTeacher, TeacherEnsemble
from kdlab.train.build import build_trainer


def _kd(s, target_probs, T):
    """T² · KL(target ‖ softmax(s/T)), batch mean, written out."""
    log_q = F.log_softmax(s / T, 1)
    return T * T * (target_probs * (target_probs.log() - log_q)).sum(1).mean()


def test_mixture_logits_soften_to_the_weighted_mixture_by_hand():
    t = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)  # B=1, M=2, K=3
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)
    T = 2.0
    p1 = torch.tensor([math.exp(1.0), 1.0, math.exp(-0.5)], dtype=torch.float64)
    p2 = torch.tensor([1.0, math.exp(0.5), 1.0], dtype=torch.float64)
    expected = 0.25 * p1 / p1.sum() + 0.75 * p2 / p2.sum()
    torch.testing.assert_close(F.softmax(mixture_logits(t, w, T) / T, 1)[0], expected)
    # a weight of 0 drops that teacher: the target is the other teacher's alone
    only2 = mixture_logits(t, torch.tensor([0.0, 1.0], dtype=torch.float64), T)
    torch.testing.assert_close(F.softmax(only2 / T, 1)[0], p2 / p2.sum())
    # extreme logits stay finite (logsumexp, no log of an underflowed probability)
    assert torch.isfinite(mixture_logits(t * 1e4, w, T)).all()


def test_loss_equals_kd_against_the_mixture_and_reduces_to_hinton_for_identical_teachers():
    g = torch.Generator().manual_seed(0)
    s, t1, t2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3))
    y = torch.randint(0, 5, (6,), generator=g)
    T = 3.0
    m = MultiTeacherKD(MultiTeacherParams("fixed", [1.0, 3.0]), "hinton", T, 0.0, 1.0)
    terms = m(Batch(torch.zeros(6, 1), y), Outputs(s), Outputs(torch.stack([t1, t2], 1)))
    mix = 0.25 * F.softmax(t1 / T, 1) + 0.75 * F.softmax(t2 / T, 1)
    torch.testing.assert_close(terms["soft"], _kd(s, mix, T))
    same = MultiTeacherKD(MultiTeacherParams("equal"), "hinton", T, 0.5, 0.5)
    hinton = build_method("hinton", load_recipe("digits-mlp", ["distill.temperature=3", "distill.hard_weight=0.5", "distill.soft_weight=0.5"]).distill)
    a = same(Batch(torch.zeros(6, 1), y), Outputs(s), Outputs(torch.stack([t1, t1], 1)))
    b = hinton(Batch(torch.zeros(6, 1), y), Outputs(s), Outputs(t1))
    torch.testing.assert_close(same.total(a), hinton.total(b))


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=g)
    m = MultiTeacherKD(MultiTeacherParams("confidence", tau=0.5), "hinton", 2.0, 0.3, 0.7)

    def total(s):
        return m.total(m(Batch(torch.zeros(4, 1), y), Outputs(s), Outputs(t)))

    assert torch.autograd.gradcheck(total, (torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True),))


def test_confidence_weights_favour_the_certain_teacher_by_the_entropy_formula():
    t = torch.tensor([[[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # sample 0: teacher 0 certain, teacher 1 uniform
                      [[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]]], dtype=torch.float64)  # sample 1: the other way
    w = confidence_weights(t, tau=1.0)
    p = F.softmax(torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64), 0)
    h_certain, h_uniform = float(-(p * p.log()).sum()), math.log(3)
    w0 = math.exp(-h_certain) / (math.exp(-h_certain) + math.exp(-h_uniform))
    torch.testing.assert_close(w, torch.tensor([[w0, 1 - w0], [1 - w0, w0]], dtype=torch.float64))
    assert w[0, 0] > 0.5 > w[0, 1]
    # smaller tau sharpens the choice
    assert confidence_weights(t, tau=0.1)[0, 0] > w[0, 0]


@pytest.mark.parametrize("params, match", [
    (dict(weighting="mean"), "weighting: must be one of equal, fixed, accuracy, confidence"),
    (dict(weighting="fixed"), "weights: weighting 'fixed' needs one finite weight"),
    (dict(weighting="fixed", weights=[1.0, -1.0]), "weights"),
    (dict(weighting="fixed", weights=[0.0, 0.0]), "not all 0"),
    (dict(weighting="equal", weights=[1.0]), "only used with weighting: fixed"),
    (dict(weighting="confidence", tau=0.0), "tau: must be a finite number > 0"),
    (dict(weighting="confidence", tau=float("nan")), "tau"),
])
def test_bad_parameters_are_one_line_errors(params, match):
    distill = load_recipe("digits-mlp").distill
    with pytest.raises(ConfigError, match=match) as e:
        build_method("multi-teacher", distill, params)
    assert "\n" not in str(e.value)


def _ctx(n_members, val_accuracy=None):
    members = [torch.nn.Linear(3, 4) for _ in range(n_members)]
    return RunContext(10, 0, torch.nn.Linear(3, 4), TeacherEnsemble(members), val_accuracy)


def test_fixed_weights_need_one_per_teacher_and_accuracy_needs_a_validation_split():
    with pytest.raises(ConfigError, match="2 weights for 3 teachers"):
        MultiTeacherKD(MultiTeacherParams("fixed", [1.0, 2.0])).setup(_ctx(3))
    with pytest.raises(ConfigError, match="needs a validation split; set dataset.val_fraction"):
        MultiTeacherKD(MultiTeacherParams("accuracy")).setup(_ctx(2))
    m = MultiTeacherKD(MultiTeacherParams("fixed", [1.0, 3.0]))
    m.setup(_ctx(2))
    torch.testing.assert_close(m.teacher_weights, torch.tensor([0.25, 0.75]))
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    again = MultiTeacherKD(MultiTeacherParams("fixed", [1.0, 3.0]))
    again.load_state_dict(torch.load(buf, weights_only=True))  # resumed weights, not re-measured
    torch.testing.assert_close(again.teacher_weights, m.teacher_weights)


def test_accuracy_weights_are_the_members_validation_accuracies_through_the_trainer():
    recipe = load_recipe("digits-mlp", ["dataset.val_fraction=0.2", "student.model.hidden=[8]", "student.train.epochs=1"])
    data = prepare_data(recipe)
    torch.manual_seed(0)
    good = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():  # a teacher fitted by least squares on the training set, and a random one
        x, y = data.train.x.flatten(1), F.one_hot(data.train.y, 10).float()
        w = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y).solution
        good[1].weight.copy_(w[:-1].T)
        good[1].bias.copy_(w[-1])
    bad = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    accs = [float((m(data.val.x).argmax(1) == data.val.y).float().mean()) for m in (good, bad)]
    assert accs[0] > accs[1]
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    method = build_method("multi-teacher", recipe.distill, {"weighting": "accuracy"})
    with FrozenTeacher(TeacherEnsemble([good, bad])) as frozen:
        trainer = build_trainer(student, method, data, recipe.student.train, teacher=frozen)
        assert trainer.cached_logits.shape == (len(data.train), 2, 10)  # each member's logits cached
        torch.testing.assert_close(method.teacher_weights, torch.tensor(accs) / sum(accs))
        (result,) = trainer.fit()
    assert result.history[-1]["teacher_weight_0"] == pytest.approx(accs[0] / sum(accs))


def test_two_architectures_through_the_pipeline_with_confidence_weights(tmp_path):
    two = ("teachers=[{model: {name: mlp, hidden: [16]}, train: {epochs: 1}}, "
           "{model: {name: cnn, channels: [4, 8]}, train: {epochs: 1}}]")
    recipe = load_recipe("digits-mlp", [two, "student.train.epochs=2", "distill.method=multi-teacher",
                                        "distill.multi-teacher={weighting: confidence}"])
    result = run_distill(recipe, None, None, out=tmp_path / "run", progress=False, teacher_cache=tmp_path / "cache")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(math.isfinite(r["loss_soft"]) for r in records)
    assert result.final_acc > 0.5


def _logits(B, M, K=4):
    return torch.randn(B, M, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_mixture_logits_refuses_per_sample_weights_laid_out_teacher_first():
    # (M, B) with M == B has the shape of (B, M): only the sums over the teachers tell them apart
    per_sample = torch.tensor([[0.9, 0.2, 0.5], [0.05, 0.7, 0.25], [0.05, 0.1, 0.25]], dtype=torch.float64)  # columns sum to 1
    with pytest.raises(ConfigError, match=r"sum to 1 over the teachers.*\(B, M\)") as e:
        mixture_logits(_logits(3, 3), per_sample, 2.0)
    assert "\n" not in str(e.value)
    mixture_logits(_logits(3, 3), per_sample.t(), 2.0)  # the (B, M) layout is accepted


@pytest.mark.parametrize("t_shape, weights, match", [
    ((2, 3), torch.tensor([0.5, 0.5]), r"teacher logits must be \(B, M, K\).*got \[2, 3\]"),
    ((2, 3, 4), torch.tensor([0.5, 0.5]), r"weights must be \(M,\) = \(3,\) or \(B, M\) = \(2, 3\).*got \[2\]"),
    ((2, 3, 4), torch.full((3, 2), 0.5), r"got \[3, 2\]"),
    ((2, 3, 4), torch.full((2, 3, 1), 1 / 3), r"got \[2, 3, 1\]"),
    ((2, 3, 4), torch.tensor([0.5, 0.5, 0.5]), r"sum to 1 over the teachers, got sums from 1.5 to 1.5"),
    ((2, 3, 4), torch.tensor([1.5, -0.25, -0.25]), r"finite and >= 0"),
    ((2, 3, 4), torch.tensor([float("nan"), 0.5, 0.5]), r"finite and >= 0"),
])
def test_mixture_logits_bad_shapes_and_weights_are_one_line_errors(t_shape, weights, match):
    t = _logits(*t_shape) if len(t_shape) == 3 else torch.randn(t_shape)
    with pytest.raises(ConfigError, match=match) as e:
        mixture_logits(t, weights.double(), 2.0)
    assert "\n" not in str(e.value)
