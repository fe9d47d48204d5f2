"""The batched grid on replayed augmented views, reading the teacher from a stored signal.

Every student of the grid sees its seed's batch in the views the store holds; trained one by one
from the same store (through autograd), each student must reach the same losses and weights to
float tolerance: the closed forms built from the batch's stored logits, and the vmapped autograd
path under MixUp (soft labels, no closed form).
"""

import functools

import pytest
import torch

from kdlab.config import TrainConfig
from kdlab.data.augment import AugmentConfig
from kdlab.data.views import ReplayViews
from kdlab.methods import CE, KD
from kdlab.models import build_model
from kdlab.teacher import FrozenTeacher
from kdlab.teacher_cache.signals import signal_store
from kdlab.train.build import build_grid_trainer, build_trainer
from kdlab.train.run import fit_grid
from kdlab.train.stored import SignalsPlan

from tests.toy_signals import toy_data, toy_teacher

SEEDS = [0, 3]


def _teacher():
    return FrozenTeacher(toy_teacher())


def _student(seed):
    torch.manual_seed(100 + seed)
    return build_model("cnn", (1, 8, 8), 5, {"channels": [4, 8]})


def _methods():
    return [CE(), KD("hinton", 3.0, 0.4, 0.6), KD("softmax-input", 2.0, 0.5, 0.5)]


def _plan(tmp_path, augment, log):
    views = ReplayViews(augment, seed=11, views=3, num_classes=5)
    return SignalsPlan(views, functools.partial(signal_store, tmp_path, log=log), explicit=True)


@pytest.mark.parametrize("augment", [AugmentConfig(crop=2, flip=True), AugmentConfig(mixup=0.4)], ids=["crop-flip", "mixup"])
def test_batched_grid_on_stored_views_equals_one_by_one_from_the_same_store(tmp_path, augment):
    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=2, batch_size=16)
    messages = []
    plan = _plan(tmp_path, augment, messages.append)
    methods = _methods()
    grid = [[_student(s) for s in SEEDS] for _ in methods]
    batched = fit_grid(grid, methods, SEEDS, data, cfg, teacher=teacher, signals=plan)
    assert sum("computing" in m for m in messages) == 1  # the grid computed the store once
    probe = build_grid_trainer([[_student(0)] for _ in methods], _methods(), [0], data, cfg, teacher=teacher, signals=plan)
    # crop/flip keeps integer labels: every variant in closed form; MixUp's soft labels: vmapped autograd
    assert [f is not None for f in probe.step.fast] == [not augment.mixes] * len(methods)
    assert probe.run_facts()["step"] == "batched grid (vmap), replayed views"
    facts = batched[1][0].extra
    assert facts["teacher_source"] == "stored signals" and facts["teacher_signals"]["views"] == 3
    for v, method in enumerate(_methods()):
        for si, s in enumerate(SEEDS):
            model = _student(s)
            trainer = build_trainer(model, method, data, cfg, seed=s, teacher=teacher, signals=plan)
            (ref,) = trainer.fit()
            trainer.close()
            assert trainer.run_facts()["step"] == "autograd"  # one by one: augmented batches train through autograd
            if method.needs.teacher:
                assert ref.extra["teacher_signals"]["computed_here"] is False  # the grid's store, reused
            got = batched[v][si]
            torch.testing.assert_close(got.step_losses, ref.step_losses, rtol=1e-4, atol=1e-5)
            for a, b in zip(model.parameters(), grid[v][si].parameters()):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            for h_ref, h_got in zip(ref.history, got.history):
                assert h_got["test_acc"] == pytest.approx(h_ref["test_acc"], abs=1e-6)
    assert sum("computing" in m for m in messages) == 1


def test_grid_students_of_one_seed_see_the_same_views_and_seeds_differ(tmp_path):
    """Fair by construction: the variants of a seed start from the same weights on the same views,
    so their first hard loss is the same number; another seed draws other batches."""
    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=1, batch_size=16)
    plan = _plan(tmp_path, AugmentConfig(crop=2, flip=True), lambda m: None)
    methods = _methods()
    grid = [[_student(s) for s in SEEDS] for _ in methods]
    res = fit_grid(grid, methods, SEEDS, data, cfg, teacher=teacher, signals=plan)
    for si in range(len(SEEDS)):
        first = [res[v][si].step_losses[0, 1].item() for v in range(len(methods))]
        assert max(first) - min(first) < 1e-6, first
    assert res[0][0].step_losses[0, 1] != res[0][1].step_losses[0, 1]


def test_grid_refuses_training_set_logits_on_augmented_views(tmp_path):
    data, cfg = toy_data(), TrainConfig(epochs=1, batch_size=16)
    plan = _plan(tmp_path, AugmentConfig(crop=2), lambda m: None)
    logits = torch.zeros(len(data.train), 5)
    with pytest.raises(ValueError, match="teacher's outputs of those views"):
        fit_grid([[_student(0)]], [KD()], [0], data, cfg, teacher_logits=logits, signals=plan)
    with pytest.raises(ValueError, match="need teacher_logits"):
        fit_grid([[_student(0)]], [KD()], [0], data, cfg)


def test_top_k_stored_logits_batch_at_one_temperature_and_equal_one_by_one(tmp_path):
    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=1, batch_size=16)
    views = ReplayViews(AugmentConfig(crop=2, flip=True), seed=11, views=2, num_classes=5)
    plan = SignalsPlan(views, functools.partial(signal_store, tmp_path, log=lambda m: None), explicit=True, top_k=2)
    with pytest.raises(ValueError, match="exact at one temperature"):  # _methods() distil at T = 3 and T = 2
        fit_grid([[_student(0)] for _ in range(3)], _methods(), [0], data, cfg, teacher=teacher, signals=plan)
    same_t = lambda: [CE(), KD("hinton", 3.0, 0.4, 0.6), KD("softmax-input", 3.0, 0.5, 0.5)]  # noqa: E731
    grid = [[_student(0)] for _ in range(3)]
    batched = fit_grid(grid, same_t(), [0], data, cfg, teacher=teacher, signals=plan)
    assert set(batched[1][0].extra["teacher_signals"]["signals"]) == {"logits_top_values", "logits_top_index", "logits_rest"}
    for v, method in enumerate(same_t()):
        model = _student(0)
        trainer = build_trainer(model, method, data, cfg, seed=0, teacher=teacher, signals=plan)
        (ref,) = trainer.fit()
        trainer.close()
        torch.testing.assert_close(batched[v][0].step_losses, ref.step_losses, rtol=1e-4, atol=1e-5)
        for a, b in zip(model.parameters(), grid[v][0].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
