"""The one trainer reproduces the previous loop exactly, for every kind of step."""

import copy

import pytest
import torch

from kdlab.recipes import load_recipe
from kdlab.methods import CE, KD, Batch, Outputs
from kdlab.pipeline import build_role_model, prepare_data
from kdlab.schedules import scheduled_values
from kdlab.teacher import FrozenTeacher, PrecomputedTeacherLogits
from kdlab.train import fit
from kdlab.train.build import build_trainer
from kdlab.train.weights import WeightPlan

FAST = ["teacher.model.hidden=[32]", "student.train.epochs=2", "student.train.optimizer.name=sgd",
        "student.train.optimizer.lr=0.05", "student.train.grad_clip=1.0"]


@pytest.fixture(scope="module")
def setup():
    recipe = load_recipe("digits-mlp", FAST + ["distill.weight_schedule.name=cosine"])
    data = prepare_data(recipe)
    teacher = FrozenTeacher(build_role_model(recipe, "teacher", data))
    return recipe, data, teacher


class PenalisedKD(KD):
    """A subclass adding a term: the planner's probe finds it differs from the closed form."""

    def forward(self, batch, student, teacher):
        terms = super().forward(batch, student, teacher)
        return {**terms, "hard": terms["hard"] + 1e-3 * student.logits.pow(2).mean()}


class L2KD(KD):
    """A subclass adding a named term (the Python guide's MyKD): the closed form has no such term."""

    def forward(self, batch, student, teacher):
        return {**super().forward(batch, student, teacher), "l2": student.logits.pow(2).mean()}

    def term_weights(self):
        return {**super().term_weights(), "l2": 0.01}


def _both(setup, method, fit_method, use_teacher):
    recipe, data, teacher = setup
    cfg = recipe.student.train
    logits = teacher.logits_for(data.train.x) if use_teacher else None

    def hook(epoch, objective):  # the previous loop's schedule: set on the objective before each epoch
        objective.temperature, objective.hard_weight, objective.soft_weight = scheduled_values(recipe.distill, epoch - 1, cfg.epochs)

    a = build_role_model(recipe, "student", data)
    b = copy.deepcopy(a)
    torch.manual_seed(5)
    old = fit(a, data, cfg, fit_method, seed=3, teacher_signal=PrecomputedTeacherLogits(logits) if use_teacher else None,
              progress=False, before_epoch=hook if use_teacher else None)
    torch.manual_seed(5)
    trainer = build_trainer(b, method, data, cfg, seed=3, teacher_logits=logits, weight_plan=WeightPlan(cfg.epochs, recipe.distill))
    (new,) = trainer.fit()
    return old, new, a, b, trainer


@pytest.mark.parametrize("kind", ["closed-form", "autograd"])
def test_kd_equals_previous_loop(setup, kind):
    recipe = setup[0]
    d = recipe.distill
    method, fit_method = ((KD if kind == "closed-form" else PenalisedKD)(d.loss, d.temperature, d.hard_weight, d.soft_weight)
                          for _ in range(2))
    old, new, a, b, trainer = _both(setup, method, fit_method, True)
    assert (trainer.fast is not None) == (kind == "closed-form")
    torch.testing.assert_close(new.step_losses, old.step_losses, rtol=1e-6, atol=1e-7)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    for h_old, h_new in zip(old.history, new.history):
        for key in ("loss_total", "loss_hard", "loss_soft", "test_acc", "temperature", "hard_weight", "soft_weight", "lr"):
            assert h_new[key] == pytest.approx(h_old[key], rel=1e-6), key
    assert new.history[0]["hard_weight"] != new.history[1]["hard_weight"]  # the cosine schedule moved it


def test_ce_equals_previous_loop_and_logs_only_its_term(setup):
    old, new, a, b, trainer = _both(setup, CE(), CE(), False)
    torch.testing.assert_close(new.step_losses, old.step_losses[:, :2], rtol=1e-6, atol=1e-7)
    assert "loss_soft" not in new.history[0] and "temperature" not in new.history[0]


def test_a_subclass_adding_a_term_is_kept_off_the_closed_form(setup):
    """No type test: the planner compares the closed form with the method's forward on a probe."""
    recipe, data, teacher = setup
    d = recipe.distill
    logits = teacher.logits_for(data.train.x)
    model = build_role_model(recipe, "student", data)
    plain = build_trainer(model, KD(d.loss, d.temperature, d.hard_weight, d.soft_weight), data, recipe.student.train,
                          teacher_logits=logits)
    penalised = build_trainer(model, PenalisedKD(d.loss, d.temperature, d.hard_weight, d.soft_weight), data,
                              recipe.student.train, teacher_logits=logits)
    assert plain.fast is not None and penalised.fast is None
    facts = penalised.run_facts()
    assert facts["step"] == "autograd" and "differs from its closed form" in facts["step_reason"]
    assert plain.run_facts()["step"] in ("closed form", "autograd-free chain")


def test_a_subclass_with_an_extra_term_is_kept_off_the_closed_form(setup):
    recipe, data, teacher = setup
    d = recipe.distill
    trainer = build_trainer(build_role_model(recipe, "student", data), L2KD(d.loss, d.temperature, d.hard_weight, d.soft_weight),
                            data, recipe.student.train, teacher_logits=teacher.logits_for(data.train.x))
    facts = trainer.run_facts()
    assert trainer.fast is None and facts["step"] == "autograd" and "differs from its closed form" in facts["step_reason"]


def test_total_is_the_weighted_sum_of_named_terms():
    method = KD("hinton", 2.0, 0.25, 0.75)
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    terms = method(Batch(s, y), Outputs(s), Outputs(t))
    assert set(terms) == {"hard", "soft"}
    torch.testing.assert_close(method.total(terms), 0.25 * terms["hard"] + 0.75 * terms["soft"])
    row = method.term_values(terms, method.total(terms))
    assert row.shape == (3,) and not row.requires_grad


def test_user_dataloader_with_online_teacher_equals_in_memory_fast_path(setup):
    """Same batches through a user's DataLoader (teacher online, autograd) and in memory (cached
    teacher logits, closed form): the same training, to float tolerance."""
    from torch.utils.data import DataLoader, TensorDataset

    from kdlab.data import BatchIndexer
    from kdlab.data.loaders import LoaderSplits

    recipe, data, teacher = setup
    cfg = recipe.student.train
    d = recipe.distill

    class FixedOrder:  # the batch order BatchIndexer(seed=3) gives, epoch after epoch
        def __init__(self):
            self.indexer = BatchIndexer(len(data.train), cfg.batch_size, seed=3)

        def __iter__(self):
            return iter([b.tolist() for b in self.indexer.epoch()])

        def __len__(self):
            return len(self.indexer)

    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_sampler=FixedOrder())
    test_loader = DataLoader(TensorDataset(data.test.x, data.test.y), batch_size=100)
    a = build_role_model(recipe, "student", data)
    b = copy.deepcopy(a)
    (mem,) = build_trainer(a, KD(d.loss, d.temperature, d.hard_weight, d.soft_weight), data, cfg, seed=3, teacher=teacher).fit()
    user = build_trainer(b, KD(d.loss, d.temperature, d.hard_weight, d.soft_weight), LoaderSplits(loader, 10, test=test_loader),
                   cfg, seed=3, teacher=teacher)
    assert user.fast is None and user.cached_logits is None
    (got,) = user.fit()
    torch.testing.assert_close(got.step_losses, mem.step_losses, rtol=1e-4, atol=1e-5)
    assert [h["test_acc"] for h in got.history] == pytest.approx([h["test_acc"] for h in mem.history], abs=1e-9)
