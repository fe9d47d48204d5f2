"""A study's one teacher signal store: every signal its runs read, computed once, handed to each run it covers."""

import functools

import pytest
import torch

from kdlab.config import DistillConfig, TrainConfig
from kdlab.data.augment import AugmentConfig
from kdlab.data.views import ReplayViews
from kdlab.methods import KD
from kdlab.methods.registry import build_method
from kdlab.models import build_model
from kdlab.study.shared_signals import StudySignals, shared_store
from kdlab.teacher import FrozenTeacher
from kdlab.teacher_cache.signals import signal_store
from kdlab.train.build import build_trainer
from kdlab.train.stored import SignalsPlan

from tests.toy_signals import toy_data, toy_teacher

CFG = TrainConfig(epochs=1, batch_size=16)


def _teacher():
    return FrozenTeacher(toy_teacher())


def _plan(root, messages):
    views = ReplayViews(AugmentConfig(crop=2, flip=True), seed=11, views=2, num_classes=5)
    return SignalsPlan(views, functools.partial(signal_store, root, log=messages.append))


def _method(name):
    params = {"at": {"pairs": {"features.2": "features.2"}},
              "fitnets": {"pairs": {"features.2": "features.2"}, "weight": 1.0},
              "fitnets5": {"pairs": {"features.5": "features.5"}, "weight": 1.0}}
    if name == "hinton":
        return KD()
    registered = "fitnets" if name.startswith("fitnets") else name
    return build_method(registered, DistillConfig(method=registered), params[name])


def _train(method, data, teacher, plan):
    torch.manual_seed(2)
    student = build_model("cnn", (1, 8, 8), 5, {"channels": [4, 8]})
    trainer = build_trainer(student, method, data, CFG, seed=0, teacher=teacher, signals=plan)
    (result,) = trainer.fit()
    trainer.close()
    return result


def test_one_store_holds_every_signal_and_answers_every_run_it_covers(tmp_path):
    data, teacher, messages = toy_data(), _teacher(), []
    plan = _plan(tmp_path / "shared", messages)
    shared = shared_store(plan, [_method(n) for n in ("hinton", "at", "fitnets5")], teacher, data, CFG)
    assert sum("computing" in m for m in messages) == 1
    assert set(shared.store.shapes) == {"logits", "feature:features.2", "feature:features.5"}
    assert shared.store.shapes["feature:features.2"].shape == (4, 4)  # AT's form: the energy map
    for name in ("hinton", "at", "fitnets5"):
        facts = _train(_method(name), data, teacher, shared.plan).extra["teacher_signals"]
        assert facts["path"] == str(shared.store.path) and facts["computed_here"] is False
        assert set(facts["signals"]) == {"logits", *({"at": ["feature:features.2"], "fitnets5": ["feature:features.5"]}
                                                     .get(name, []))}  # each run maps only what it reads
    assert shared.readers == 3 and sum("computing" in m for m in messages) == 1  # no run computed a store of its own
    note = shared.note()
    assert "(logits, features.2, features.5; 2 view(s) per sample)" in note and "read by 3 student run(s)" in note and "computed in" in note


def test_a_run_from_the_shared_store_equals_a_run_from_its_own_store(tmp_path):
    data, teacher = toy_data(), _teacher()
    shared = shared_store(_plan(tmp_path / "shared", []), [_method("hinton"), _method("at")], teacher, data, CFG)
    from_shared = _train(_method("at"), data, teacher, shared.plan)
    own = _train(_method("at"), data, teacher, _plan(tmp_path / "own", []))
    assert own.extra["teacher_signals"]["path"] != from_shared.extra["teacher_signals"]["path"]
    torch.testing.assert_close(from_shared.step_losses, own.step_losses, rtol=0, atol=0)


def test_a_layer_read_in_two_forms_is_stored_in_both_from_one_teacher_pass(tmp_path):
    """AT stores features.2 as its energy map; FitNets on the same layer reads the map itself: the study's
    store keeps both (FitNets' under an alias), and each run equals a run from its own store."""
    data, teacher, messages = toy_data(), _teacher(), []
    shared = shared_store(_plan(tmp_path / "shared", messages), [_method("at"), _method("fitnets")], teacher, data, CFG)
    assert StudySignals([_method("at"), _method("fitnets")]).left_out[0].method_name == "fitnets"  # a grid's union
    assert set(shared.store.shapes) == {"logits", "feature:features.2", "feature:features.2@feature"}
    assert shared.store.shapes["feature:features.2"].shape == (4, 4)  # AT's energy map
    assert shared.store.shapes["feature:features.2@feature"].shape == (6, 4, 4)  # the map itself
    # stored for FitNets, but still listed: a batched step (one array per layer) cannot hold it
    assert [m.method_name for m in shared.left_out] == ["fitnets"] and sum("computing" in m for m in messages) == 1
    for name in ("fitnets", "at"):
        run = _train(_method(name), data, teacher, shared.plan)
        facts = run.extra["teacher_signals"]
        assert facts["path"] == str(shared.store.path) and facts["computed_here"] is False
        assert facts["signals"]["feature:features.2"]["shape"] == ([6, 4, 4] if name == "fitnets" else [4, 4])
        own = _train(_method(name), data, teacher, _plan(tmp_path / f"own-{name}", []))
        assert own.extra["teacher_signals"]["path"] != facts["path"]
        torch.testing.assert_close(run.step_losses, own.step_losses, rtol=0, atol=0)
    assert shared.readers == 2 and sum("computing" in m for m in messages) == 1


def test_a_store_that_does_not_fit_leaves_the_plan_as_it_was(tmp_path):
    data, teacher = toy_data(), _teacher()
    views = ReplayViews(AugmentConfig(crop=2), seed=11, views=2, num_classes=5)
    plan = SignalsPlan(views, functools.partial(signal_store, tmp_path, max_gb=1e-9, log=lambda m: None))
    shared = shared_store(plan, [_method("hinton")], teacher, data, CFG)
    assert shared.store is None and shared.plan is plan and "teacher_signals.max_gb" in shared.reason
    assert shared.note().startswith("no shared teacher signal store")
    with pytest.raises(AssertionError):
        shared.logits_table(data.train)


def test_top_k_logits_are_shared_at_one_temperature_and_another_gets_its_own_store(tmp_path):
    data, teacher, messages = toy_data(), _teacher(), []
    views = ReplayViews(AugmentConfig(crop=2), seed=11, views=2, num_classes=5)
    plan = SignalsPlan(views, functools.partial(signal_store, tmp_path, log=messages.append), top_k=2)
    shared = shared_store(plan, [KD(temperature=4.0), KD(temperature=2.0)], teacher, data, CFG)
    at_4 = _train(KD(temperature=4.0), data, teacher, shared.plan).extra["teacher_signals"]
    at_2 = _train(KD(temperature=2.0), data, teacher, shared.plan).extra["teacher_signals"]
    assert at_4["path"] == str(shared.store.path) and at_2["path"] != at_4["path"]
    assert shared.readers == 1 and sum("computing" in m for m in messages) == 2
    table = shared.logits_table(data.train)  # expanded from the top 2 and the rest logit, as a run reads them
    low = table.sort(1).values[:, :3]  # the 3 classes outside the top 2 share one rest logit
    assert table.shape == (48, 5) and torch.equal(low, low[:, :1].expand_as(low))
