"""Staged (progressive) training: stage boundaries, weights in force, optimizer resets, resume."""

import copy

import pytest
import torch

from kdlab.config import StageConfig
from kdlab.errors import ConfigError
from kdlab.methods import KD, build_method
from kdlab.pipeline import build_role_model, prepare_data, run_distill
from kdlab.recipes import load_recipe
from kdlab.teacher import FrozenTeacher
from kdlab.train.callbacks import Callback
from kdlab.train.stages import check_stages, stage_at
from kdlab.train.build import build_trainer
from kdlab.train.weights import WeightPlan


def test_stage_boundaries_by_hand():
    stages = [StageConfig(epochs=2), StageConfig(epochs=3), StageConfig()]
    assert [stage_at(stages, e) for e in range(1, 9)] == [(0, 1), (0, 1), (1, 3), (1, 3), (1, 3), (2, 6), (2, 6), (2, 6)]
    # a last stage with epochs still runs to the end
    assert stage_at([StageConfig(epochs=1), StageConfig(epochs=1)], 5) == (1, 2)


@pytest.mark.parametrize("stages, match", [
    ("[{terms: {hint: 1}}, {epochs: 3}]", r"distill.stages\[0\].epochs: every stage but the last needs"),
    ("[{epochs: 0}, {}]", r"distill.stages\[0\].epochs: must be an integer"),
    ("[{epochs: 4}, {}]", "the stages before the last take 4 epochs but the student trains 4"),
    ("[{epochs: 1, terms: {hint: .nan}}, {}]", r"distill.stages\[0\].terms.hint: must be a finite number"),
    ("[{epochs: 1, terms: {hint: -1}}, {}]", r"terms.hint: must be a finite number >= 0"),
    ("[{epochs: 1, terms: {hint: 0}}, {}]", "every weight is 0"),
    ("[{epochs: 1, terms: {hint: one}}, {}]", "expected a number"),
    ("[{epochs: 1, weights: {hint: 1}}, {}]", "weights: unknown key"),
])
def test_bad_stages_are_one_line_errors(stages, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_recipe("digits-mlp", ["student.train.epochs=4", f"distill.stages={stages}"])
    assert "\n" not in str(e.value)


def test_unknown_terms_name_the_methods_terms():
    distill = load_recipe("digits-mlp").distill
    with pytest.raises(ConfigError, match="hint not a term of this method; its terms are hard, soft"):
        check_stages([StageConfig(epochs=1, terms={"hint": 1.0})], build_method("hinton", distill))


class _OptimizerSeen(Callback):
    """The optimizer state's size as each epoch's steps begin (after the weight plan's reset)."""

    def __init__(self):
        self.sizes = []

    def wrap_steps(self, trainer, steps, total):
        self.sizes.append(len(trainer.optimizer.state))
        return steps


@pytest.fixture(scope="module")
def digits():
    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[32]", "student.model.hidden=[12]", "student.train.epochs=4"])
    data = prepare_data(recipe)
    return recipe, data, build_role_model(recipe, "teacher", data)


def _run(digits, method, stages, steps="auto"):
    recipe, data, teacher = digits
    student = build_role_model(recipe, "student", data)
    seen = _OptimizerSeen()
    trainer = build_trainer(student, method, data, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher),
                      callbacks=[seen], weight_plan=WeightPlan(stages=stages), steps=steps)
    (result,) = trainer.fit()
    return trainer, result, seen


def test_closed_form_honours_stage_weights_and_resets_the_optimizer(digits):
    stages = [StageConfig(name="labels", epochs=2, terms={"hard": 1.0}),
              StageConfig(name="kd", terms={"hard": 0.5, "soft": 0.5}, reset_optimizer=True)]
    fast_trainer, fast, seen = _run(digits, KD("hinton", 4.0, 0.3, 0.7), stages)
    assert fast_trainer.fast is not None  # the closed form is used ...
    slow_trainer, slow, _ = _run(digits, KD("hinton", 4.0, 0.3, 0.7), stages, steps="autograd")
    assert slow_trainer.fast is None
    for a, b in zip(fast.history, slow.history):  # ... and computes the staged objective exactly
        assert a["loss_total"] == pytest.approx(b["loss_total"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-3)
    h = fast.history
    assert [r["stage"] for r in h] == [1, 1, 2, 2] and [r["stage_name"] for r in h] == ["labels", "labels", "kd", "kd"]
    assert (h[0]["weight_hard"], h[0]["weight_soft"]) == (1.0, 0.0) and (h[2]["weight_hard"], h[2]["weight_soft"]) == (0.5, 0.5)
    assert h[0]["loss_total"] == pytest.approx(h[0]["loss_hard"], rel=1e-5)  # stage 1 trains CE alone
    assert seen.sizes[0] == 0 and seen.sizes[1] > 0 and seen.sizes[2] == 0 and seen.sizes[3] > 0  # fresh state at stage 2
    assert fast_trainer.method.epoch_weights is None  # the method is handed back as configured


def test_fitnets_hint_only_stage_then_kd_plus_hint_through_the_pipeline(tmp_path):
    stages = "[{name: hint, epochs: 2, terms: {hint: 1}}, {terms: {hard: 0.5, soft: 0.5, hint: 1}, reset_optimizer: true}]"
    base = ["teacher.model.hidden=[32]", "teacher.train.epochs=1", "student.model.hidden=[12]", "distill.method=fitnets",
            "distill.fitnets={pairs: {net.1: net.1}}", f"distill.stages={stages}"]
    cache = tmp_path / "cache"
    whole = run_distill(load_recipe("digits-mlp", [*base, "student.train.epochs=4"]), None, None, out=tmp_path / "whole",
                        progress=False, teacher_cache=cache)
    h = whole.fit.history
    assert [r["stage"] for r in h] == [1, 1, 2, 2]
    assert all(r["weight_hard"] == 0 and r["weight_soft"] == 0 and r["weight_hint"] == 1 for r in h[:2])
    assert all(r["loss_total"] == pytest.approx(r["loss_hint"], rel=1e-5) for r in h[:2])  # the hint alone trains


class _Stop(Exception):
    pass


class _SaveAndStop(Callback):
    """Keeps the state an exact resume needs after ``epoch``, then stops the run there."""

    def __init__(self, epoch):
        self.epoch, self.saved = epoch, None

    def on_epoch_end(self, trainer, epoch, records):
        if epoch == self.epoch:
            self.saved = copy.deepcopy((trainer.model.state_dict(), trainer.state_dict()))
            raise _Stop


def test_a_run_resumed_at_a_stage_boundary_resets_there_and_equals_the_uninterrupted_run(digits):
    recipe, data, teacher = digits
    stages = [StageConfig(epochs=2, terms={"hard": 1.0}), StageConfig(terms={"hard": 0.5, "soft": 0.5}, reset_optimizer=True)]

    def trainer(callbacks):
        student = build_role_model(recipe, "student", data)
        return build_trainer(student, KD("hinton", 4.0, 0.5, 0.5), data, recipe.student.train, seed=0,
                       teacher=FrozenTeacher(teacher), callbacks=list(callbacks), weight_plan=WeightPlan(stages=stages))

    (whole,) = trainer([]).fit()
    stop = _SaveAndStop(2)
    with pytest.raises(_Stop):
        trainer([stop]).fit()
    seen = _OptimizerSeen()
    resumed = trainer([seen])
    resumed.model.load_state_dict(stop.saved[0])
    resumed.load_state_dict(stop.saved[1])
    (rest,) = resumed.fit()
    assert seen.sizes[0] == 0  # epoch 3 starts stage 2 with fresh optimizer state, as in the whole run
    assert [r["epoch"] for r in rest.history] == [3, 4]
    for a, b in zip(whole.history[2:], rest.history):
        assert a["loss_total"] == pytest.approx(b["loss_total"], rel=1e-6) and a["test_acc"] == b["test_acc"]


def test_stage_terms_are_checked_before_anything_is_written(tmp_path):
    recipe = load_recipe("digits-mlp", ["student.train.epochs=2", "distill.stages=[{epochs: 1, terms: {hint: 1}}, {}]"])
    with pytest.raises(ConfigError, match="hint not a term of this method"):
        run_distill(recipe, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), None, out=tmp_path / "run",
                    progress=False)
    assert not (tmp_path / "run").exists()
