import dataclasses

import pytest
import torch

from kdlab.recipes import load_recipe
from kdlab.methods import CE, KD
from kdlab.models import build_model
from kdlab.pipeline import build_role_model, prepare_data, run_teacher
from kdlab.schedules import scheduled_values
from kdlab.train.run import fit_grid
from kdlab.train.students import grid_blocker
from kdlab.teacher import FrozenTeacher, PrecomputedTeacherLogits
from kdlab.train import fit
from kdlab.train.weights import WeightPlan

VARIANTS = ["scratch", "hinton", "softmax-input", "mean-reduction"]
SEEDS = [0, 3]


def _method(v, distill=None):
    """``distill``: the recipe's settings, which a scheduled run's methods are built from (as kdlab's commands do)."""
    if v == "scratch":
        return CE()
    if distill is None:
        return KD(coding=v, temperature=3.0, hard_weight=0.4, soft_weight=0.6)
    return KD(coding=v, temperature=distill.temperature, hard_weight=distill.hard_weight, soft_weight=distill.soft_weight)


def _one_by_one_vs_batched(recipe, data, logits, variants, seeds, before_epoch=None):
    grid = [[build_role_model(dataclasses.replace(recipe, seed=s), "student", data) for s in seeds] for _ in variants]
    plan = WeightPlan(recipe.student.train.epochs, recipe.distill) if before_epoch else None
    methods = [_method(v, recipe.distill if before_epoch else None) for v in variants]
    batched = fit_grid(grid, methods, seeds, data, recipe.student.train, teacher_logits=logits, weight_plan=plan)
    for vi, v in enumerate(variants):
        for si, s in enumerate(seeds):
            model = build_role_model(dataclasses.replace(recipe, seed=s), "student", data)
            signal = None if v == "scratch" else PrecomputedTeacherLogits(logits)
            ref = fit(model, data, recipe.student.train, _method(v), seed=s, teacher_signal=signal,
                      before_epoch=before_epoch if signal else None, progress=False)
            got = batched[vi][si]
            for a, b in zip(model.parameters(), grid[vi][si].parameters()):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.step_losses, ref.step_losses[:, : got.step_losses.shape[1]], rtol=1e-4, atol=1e-5)
            for h_ref, h_got in zip(ref.history, got.history):
                assert h_got["test_acc"] == pytest.approx(h_ref["test_acc"], abs=1e-6)
                assert h_got["loss_total"] == pytest.approx(h_ref["loss_total"], rel=1e-4, abs=1e-6)
                for key in ("temperature", "hard_weight", "soft_weight", "negative_loss_steps"):
                    assert h_got.get(key) == h_ref.get(key)
            assert got.best_epoch == ref.best_epoch


@pytest.fixture(scope="module")
def setup():
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[64]", "teacher.train.epochs=2", "student.train.epochs=3"])
    data = prepare_data(recipe)
    teacher = run_teacher(recipe, data, out=False, progress=False)
    return recipe, data, FrozenTeacher(teacher.model).logits_for(data.train.x)


def test_batched_students_equal_one_by_one_training(setup):
    _one_by_one_vs_batched(*setup, VARIANTS, SEEDS)


def test_batched_equality_holds_with_sgd_clipping_cosine_lr_and_schedules(setup):
    recipe, data, logits = setup
    recipe = load_recipe("digits-mlp", ["student.train.epochs=3", "student.train.optimizer={name: sgd, lr: 0.05}",
                                        "student.train.grad_clip=0.5", "student.train.scheduler.name=cosine",
                                        "distill.weight_schedule.name=cosine"])

    def hook(epoch, objective):  # the previous loop's schedule: set on the objective before each epoch
        objective.temperature, objective.hard_weight, objective.soft_weight = scheduled_values(
            recipe.distill, epoch - 1, recipe.student.train.epochs)

    _one_by_one_vs_batched(recipe, data, logits, ["scratch", "hinton"], [1, 2], hook)


def test_batched_cnn_students_equal_one_by_one(setup):
    _, data, logits = setup
    recipe = load_recipe("digits-mlp", ["student.model={name: cnn, channels: [4, 8]}", "student.train.epochs=2"])
    _one_by_one_vs_batched(recipe, data, logits, ["scratch", "hinton"], [0, 1])


def test_dropout_and_batchnorm_students_are_refused_with_a_reason(setup):
    assert grid_blocker(build_model("mlp", (1, 8, 8), 10, {"hidden": [8], "dropout": 0.2})) is not None
    assert grid_blocker(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64))) is not None
    assert grid_blocker(build_model("mlp", (1, 8, 8), 10, {"hidden": [8]})) is None
    recipe, data, logits = setup
    student = build_model("mlp", data.in_shape, 10, {"hidden": [8], "dropout": 0.2})
    with pytest.raises(ValueError, match="dropout"):
        fit_grid([[student]], [_method("hinton")], [0], data, recipe.student.train, teacher_logits=logits)


def test_a_coding_without_closed_form_is_batched_through_autograd(setup):
    """Every built-in coding has a closed form; a user's coding takes the vmapped autograd path."""
    from kdlab.losses import SOFT_LOSSES
    from kdlab.losses.kd import kd_loss

    SOFT_LOSSES.register("test-half-hinton")(lambda s, t, T: 0.5 * kd_loss(s, t, T))
    try:
        _one_by_one_vs_batched(*setup, ["scratch", "test-half-hinton", "hinton"], [0, 2])
    finally:
        SOFT_LOSSES.unregister("test-half-hinton")
