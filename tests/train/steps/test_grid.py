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
from kdlab.features import PENULTIMATE
from kdlab.config import DistillConfig
from kdlab.methods import CE, KD, build_method
from kdlab.methods.attention import ATParams, AttentionTransfer
from kdlab.models import build_model
from kdlab.teacher import FrozenTeacher
from kdlab.teacher_cache.signals import signal_store
from kdlab.train.build import build_grid_trainer, build_trainer, grid_method_blocker
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


def _reads_features(method):
    return bool(method.needs.teacher_features)


def _alone_equals_batched(data, teacher, cfg, plan, make_methods, batched, grid, expect_step,
                          checked=_reads_features, reuses=_reads_features):
    """Each student trained alone from ``plan`` has its batched twin's losses, weights and accuracies; the
    ``checked`` methods train alone with step ``expect_step``, the ``reuses`` ones read the grid's store."""
    for v, method in enumerate(make_methods()):
        for si, s in enumerate(SEEDS):
            model = _student(s)
            trainer = build_trainer(model, method, data, cfg, seed=s, teacher=teacher, signals=plan)
            (ref,) = trainer.fit()
            trainer.close()
            if checked(method):
                assert trainer.run_facts()["step"] == expect_step
            if reuses(method):
                assert ref.extra["teacher_signals"]["computed_here"] is False  # the grid's store, reused
            got = batched[v][si]
            assert got.step_losses.shape == ref.step_losses.shape
            torch.testing.assert_close(got.step_losses, ref.step_losses, rtol=1e-4, atol=1e-5)
            for a, b in zip(model.parameters(), grid[v][si].parameters()):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            for h_ref, h_got in zip(ref.history, got.history):
                assert h_got["test_acc"] == pytest.approx(h_ref["test_acc"], abs=1e-6)


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
    # one by one: augmented batches train through autograd, and every distilling student reuses the grid's store
    _alone_equals_batched(data, teacher, cfg, plan, _methods, batched, grid, "autograd",
                          checked=lambda m: True, reuses=lambda m: m.needs.teacher)
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


# ---------------------------------------------------------------- feature methods in the grid

PAIRS = {"features.2": "features.2", "features.5": "features.5"}


def _at(pairs=PAIRS, weight=50.0):
    return AttentionTransfer(ATParams(pairs=dict(pairs), weight=weight), "hinton", 3.0, 0.4, 0.6)


def _mixed():
    return [CE(), KD("hinton", 3.0, 0.4, 0.6), _at()]


def _grid_from_one_store(tmp_path, augment, make_methods):
    """A 3-variant grid trained for 2 epochs from one store of ``augment``'s views (1 view on plain batches),
    computed once: (data, teacher, cfg, plan, grid, batched results)."""
    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=2, batch_size=16)
    messages = []
    views = ReplayViews(augment, seed=11, views=3 if augment.enabled else 1, num_classes=5)
    plan = SignalsPlan(views, functools.partial(signal_store, tmp_path, log=messages.append), explicit=True)
    grid = [[_student(s) for s in SEEDS] for _ in range(3)]
    batched = fit_grid(grid, make_methods(), SEEDS, data, cfg, teacher=teacher, signals=plan)
    assert sum("computing" in m for m in messages) == 1
    return data, teacher, cfg, plan, grid, batched


@pytest.mark.parametrize("augment", [AugmentConfig(crop=2, flip=True), AugmentConfig()], ids=["crop-flip", "plain"])
def test_batched_attention_transfer_equals_one_by_one_from_the_same_store(tmp_path, augment):
    """AT (no parameters, a vmap-compatible loss) trains in the grid beside scratch and Hinton KD: each
    student's tapped maps against the teacher's stored energy maps, the same losses and weights as alone."""
    data, teacher, cfg, plan, grid, batched = _grid_from_one_store(tmp_path, augment, _mixed)
    facts = batched[2][0].extra
    probe = build_grid_trainer([[_student(0)] for _ in range(3)], _mixed(), [0], data, cfg, teacher=teacher, signals=plan)
    assert probe.run_facts()["step"] == "batched grid (vmap), " + ("replayed views" if augment.enabled else "stored teacher signal")
    assert [f is not None for f in probe.step.fast] == [True, True, False]  # AT's features go through autograd
    probe.close()
    assert {"feature:features.2", "feature:features.5"} <= set(facts["teacher_signals"]["signals"])
    assert batched[2][0].step_losses.shape[1] == 4  # total, hard, soft, at
    assert (batched[2][0].step_losses[:, 3] > 0).all()  # the at term is there, not a padded NaN or a zero
    # alone, AT reads the grid's store (asserted inside); Hinton KD alone asks for a logits-only store of its own
    _alone_equals_batched(data, teacher, cfg, plan, _mixed, batched, grid, "autograd")


def test_grid_attention_transfer_reads_the_teacher_s_energy_maps(tmp_path):
    """The at term of the first batched step is the independent formula on the step's own inputs."""
    import torch.nn.functional as F

    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=1, batch_size=16)
    plan = _plan(tmp_path, AugmentConfig(), lambda m: None)
    trainer = build_grid_trainer([[_student(0)]], [_at()], [0], data, cfg, teacher=teacher, signals=plan)
    step = trainer.step
    batches, _ = step.epoch(1)
    first = next(iter(batches))
    model = _student(0)
    x = data.train.x.index_select(0, first[0])
    feats = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o.clone()))
             for n in PAIRS]
    model(x)
    t_feats = {}
    hooks += [teacher.model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: t_feats.__setitem__(n, o.clone()))
              for n in PAIRS]
    with torch.no_grad():
        teacher.model(x)
    for h in hooks:
        h.remove()

    def att(f):
        return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)

    expected = sum((att(feats[n]) - att(t_feats[n])).pow(2).mean() for n in PAIRS)
    row = step(first)  # (V, S, width)
    trainer.close()
    assert row[0, 0, 3].item() == pytest.approx(expected.item(), rel=1e-4)


def _rkd_mixed():
    return [CE(), KD("hinton", 3.0, 0.4, 0.6), build_method("rkd", DistillConfig(temperature=3.0), {})]


@pytest.mark.parametrize("augment", [AugmentConfig(crop=2, flip=True), AugmentConfig()], ids=["crop-flip", "plain"])
def test_batched_rkd_equals_one_by_one_from_the_same_store(tmp_path, augment):
    """RKD has no parameters but data-dependent operations (torch.unique, boolean indexing): the grid calls
    its loss once per seed on that seed's slice of the stacked forward, with the teacher's stored
    penultimate embeddings; each student gets the losses and weights it gets alone."""
    data, teacher, cfg, plan, grid, batched = _grid_from_one_store(tmp_path, augment, _rkd_mixed)
    assert f"feature:{PENULTIMATE}" in batched[2][0].extra["teacher_signals"]["signals"]
    rkd_rows = batched[2][0].step_losses
    assert rkd_rows.shape[1] == 5 and (rkd_rows[:, 3:] > 0).all()  # total, hard, soft, rkd_distance, rkd_angle
    _alone_equals_batched(data, teacher, cfg, plan, _rkd_mixed, batched, grid, "autograd")


def test_dkd_without_a_closed_form_batches_through_vmap_on_cached_logits():
    """A logits method with no closed form (DKD, with its warm-up moving its weights per epoch) is vmapped
    through autograd in the grid, on plain batches from training-set logits: the same as one by one."""
    data, cfg = toy_data(), TrainConfig(epochs=2, batch_size=16)
    with torch.no_grad():
        logits = toy_teacher()(data.train.x)
    make = lambda: build_method("dkd", DistillConfig(temperature=3.0), {"warmup": 2})  # noqa: E731
    grid = [[_student(s) for s in SEEDS]]
    batched = fit_grid(grid, [make()], SEEDS, data, cfg, teacher_logits=logits)
    probe = build_grid_trainer([[_student(0)]], [make()], [0], data, cfg, teacher_logits=logits)
    assert probe.step.fast == [None]  # no closed form: autograd, vmapped
    probe.close()
    weights = [h["tckd_weight"] for h in batched[0][0].history]
    assert weights[0] < weights[1]  # the warm-up moved the weights between epochs
    for si, s in enumerate(SEEDS):
        model = _student(s)
        trainer = build_trainer(model, make(), data, cfg, seed=s, teacher_logits=logits)
        (ref,) = trainer.fit()
        trainer.close()
        torch.testing.assert_close(batched[0][si].step_losses, ref.step_losses, rtol=1e-4, atol=1e-5)
        for a, b in zip(model.parameters(), grid[0][si].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_grid_refuses_feature_methods_with_parameters(tmp_path):
    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=1, batch_size=16)
    plan = _plan(tmp_path, AugmentConfig(), lambda m: None)
    refused = {
        "fitnets": "its adapters are per-student parameters",
        "crd": "embedding heads are per-student parameters",
    }
    sections = {"fitnets": {"pairs": {"features.2": "features.2"}}, "crd": {"num_samples": len(data.train)}}
    for name, reason in refused.items():
        method = build_method(name, DistillConfig(), sections[name])
        assert reason in grid_method_blocker(method)
        assert grid_method_blocker(method).startswith(f"{name} trains one student at a time: ")
        with pytest.raises(ValueError, match=reason):
            fit_grid([[_student(0)]], [method], [0], data, cfg, teacher=teacher, signals=plan)
    assert grid_method_blocker(_at()) is None
    assert grid_method_blocker(KD()) is None
    assert grid_method_blocker(build_method("rkd", DistillConfig(), {})) is None


def test_grid_refuses_feature_variants_no_one_store_covers(tmp_path):
    """Two AT variants reading one teacher layer at different powers need two forms of it: refused, not a wrong loss."""
    data, teacher, cfg = toy_data(), _teacher(), TrainConfig(epochs=1, batch_size=16)
    plan = _plan(tmp_path, AugmentConfig(), lambda m: None)
    other = AttentionTransfer(ATParams(pairs=dict(PAIRS), p=4.0), "hinton", 3.0, 0.4, 0.6)
    with pytest.raises(ValueError, match="another form"):
        fit_grid([[_student(0)], [_student(0)]], [_at(), other], [0], data, cfg, teacher=teacher, signals=plan)
    with pytest.raises(ValueError, match="teacher's features need a teacher and a signals plan"):
        fit_grid([[_student(0)]], [_at()], [0], data, cfg, teacher_logits=torch.zeros(len(data.train), 5))
