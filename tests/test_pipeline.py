import json

import pytest
import torch

from kdlab import ConfigError
from kdlab.pipeline import prepare_data, run_distill, run_student, run_teacher
from kdlab.recipes import load_recipe
from kdlab.study.demo import run_demo
from kdlab.teacher import FrozenTeacher

FAST = ["teacher.model.hidden=[64]", "teacher.train.epochs=2", "student.train.epochs=2"]


@pytest.fixture(scope="module")
def setup():
    recipe = load_recipe("digits-mlp", FAST)
    data = prepare_data(recipe)
    teacher = run_teacher(recipe, data, out=False, progress=False)
    return recipe, data, teacher


def test_distill_records_all_terms(setup, tmp_path):
    recipe, data, teacher = setup
    result = run_distill(recipe, teacher.model, data, out=tmp_path / "d", progress=False)
    h = result.fit.history[0]
    for key in ("loss_total", "loss_hard", "loss_soft", "temperature", "hard_weight", "soft_weight", "negative_loss_steps"):
        assert key in h
    d = recipe.distill  # the digits recipe's own weights (0.1 / 0.9 since the recipe was retuned)
    assert h["loss_total"] == pytest.approx(d.hard_weight * h["loss_hard"] + d.soft_weight * h["loss_soft"], rel=1e-5)
    assert h["negative_loss_steps"] == 0


def test_teacher_runs_once_per_run_and_stays_in_eval(setup):
    recipe, data, teacher = setup
    forwards, modes = [], []

    def hook(module, inputs, output):
        forwards.append(inputs[0].shape[0])
        modes.append(module.training)

    handle = teacher.model.register_forward_hook(hook)
    try:
        run_distill(recipe, teacher.model, data, out=False, progress=False)
    finally:
        handle.remove()
    assert sum(forwards) == len(data.train)  # one pass over the training set, not one per step
    assert not any(modes)
    assert all(not p.requires_grad for p in teacher.model.parameters())


def test_scratch_and_distilled_students_start_from_same_weights(setup):
    recipe, data, _ = setup
    from kdlab.pipeline import build_role_model

    a, b = build_role_model(recipe, "student", data), build_role_model(recipe, "student", data)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_distill_from_checkpoint_and_mismatch(setup, tmp_path):
    recipe, data, _ = setup
    run_teacher(recipe, data, out=tmp_path / "t", progress=False)
    result = run_distill(recipe, tmp_path / "t" / "best.pt", data, out=tmp_path / "s", progress=False)
    assert result.final_acc > 0.3
    fake = prepare_data(recipe)
    fake.classes = fake.classes[:5]
    with pytest.raises(ConfigError, match="class count mismatch: teacher .* has 10 outputs, dataset 'digits' has 5 classes"):
        run_distill(recipe, tmp_path / "t" / "best.pt", fake, out=False, progress=False)


def test_demo_pairs_scratch_and_distilled_students_over_seeds(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    demo = run_demo(recipe, seeds=3, out=tmp_path / "demo", progress=False, teacher_cache=tmp_path / "cache", log=lambda _: None)
    assert demo.seeds == [0, 1, 2] and demo.study.variants == ["scratch", "hinton"]
    assert demo.scratch_acc == [demo.study.run("scratch", s).final_acc for s in demo.seeds]
    assert demo.distilled_acc == [demo.study.run("hinton", s).final_acc for s in demo.seeds]
    assert demo.gain.diff.mean == pytest.approx(demo.distilled.mean - demo.scratch.mean)
    assert demo.wins + demo.ties <= 3 and demo.student_parameters == 64 * 20 + 20 + 20 * 20 + 20 + 210
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert [r["scratch_acc"] for r in saved["per_seed"]] == demo.scratch_acc
    assert (tmp_path / "demo" / "demo.md").read_text().endswith(demo.table() + "\n")
    assert (tmp_path / "demo" / "results.json").is_file() and (tmp_path / "demo" / "report.md").is_file()


def test_demo_refuses_one_seed_and_a_used_folder(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    with pytest.raises(ConfigError, match="--seeds must be >= 2"):
        run_demo(recipe, seeds=1, out=tmp_path / "one", teacher_cache=tmp_path / "cache")
    used = tmp_path / "used"
    used.mkdir()
    (used / "report.md").write_text("earlier run")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        run_demo(recipe, seeds=2, out=used, teacher_cache=tmp_path / "cache")
    assert not (tmp_path / "one").exists() and not (tmp_path / "cache").exists()
    assert [p.name for p in used.iterdir()] == ["report.md"]


def test_scratch_student(setup):
    recipe, data, _ = setup
    assert run_student(recipe, data, out=False, progress=False).parameters == 64 * 20 + 20 + 20 * 20 + 20 + 210


def test_augmented_distillation_runs_the_teacher_online_on_the_augmented_batch(tmp_path):
    """With an augment section the teacher sees every augmented batch (no logit cache)."""
    from kdlab.pipeline import run_distill
    from kdlab.teacher import FrozenTeacher

    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[16]", "student.train.epochs=1",
                                        "augment={crop: 1, flip: true, mixup: 0.2}"])
    data = prepare_data(recipe)
    teacher = FrozenTeacher(run_teacher(load_recipe("digits-mlp", ["teacher.model.hidden=[16]", "teacher.train.epochs=1"]),
                                        data, out=False, progress=False).model)
    seen = []
    handle = teacher.model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    result = run_distill(recipe, teacher, data, out=False, progress=False, teacher_online=True)
    handle.remove()
    steps = -(-len(data.train) // recipe.student.train.batch_size)
    assert len(seen) == steps  # one teacher forward per step, none for a cache
    assert not any(torch.equal(x, data.train.x[: len(x)]) for x in seen)
    assert result.fit.history[0]["loss_total"] == result.fit.history[0]["loss_total"]  # finite


def test_augmented_distillation_by_default_runs_the_teacher_once_per_stored_view(tmp_path):
    """Without --teacher-online the teacher runs over views 0..V-1 of the training set once, not per step."""
    from kdlab.pipeline import run_distill
    from kdlab.teacher import FrozenTeacher

    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[16]", "student.train.epochs=2",
                                        "augment={crop: 1, flip: true}", "teacher_signals={views: 2}"])
    data = prepare_data(recipe)
    teacher = FrozenTeacher(run_teacher(load_recipe("digits-mlp", ["teacher.model.hidden=[16]", "teacher.train.epochs=1"]),
                                        data, out=False, progress=False).model)
    rows = []
    handle = teacher.model.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    result = run_distill(recipe, teacher, data, out=False, progress=False, teacher_cache=tmp_path / "cache")
    handle.remove()
    assert sum(rows) == 2 * len(data.train) + 2  # two views of every sample, and the 2-row shape probe
    assert result.fit.extra["teacher_source"] == "stored signals"
    assert result.fit.extra["teacher_signals"]["views"] == 2


def test_a_bad_augment_section_is_one_line():
    with pytest.raises(ConfigError, match="augment"):
        load_recipe("digits-mlp", ["augment={crop: -1}"])


def test_device_setting_resolves_and_refuses_what_is_not_there():
    import torch

    from kdlab.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = load_recipe("digits-mlp", ["device=auto"])
    assert prepare_data(recipe).train.x.device.type == resolve_device("auto").type
    with pytest.raises(ConfigError, match="device: unknown device 'gpu'"):
        load_recipe("digits-mlp", ["device=gpu"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            load_recipe("digits-mlp", ["device=cuda"])


def test_teacher_augment_jitters_the_teachers_batches_only(setup, tmp_path):
    recipe, data, _ = setup
    jittered = load_recipe("digits-mlp", [*FAST, "teacher.augment={crop: 2}"])
    t = run_teacher(jittered, data, out=tmp_path / "t", progress=False)
    info = json.loads((tmp_path / "t" / "run.json").read_text())
    assert info["step"] == "autograd" and "augmented" in info["step_reason"]
    plain = run_teacher(recipe, data, out=False, progress=False)
    assert not torch.equal(t.model.net[0].weight, plain.model.net[0].weight)  # same seed, other batches
    run_distill(jittered, t.model, data, out=tmp_path / "d", progress=False)  # the student is not augmented
    assert json.loads((tmp_path / "d" / "run.json").read_text())["step"] == "autograd-free chain"
    with pytest.raises(ConfigError, match=r"teacher.augment.crop: padding in pixels must be an integer >= 0"):
        load_recipe("digits-mlp", ["teacher.augment={crop: -1}"])
    with pytest.raises(ConfigError, match="student.augment: the students' batches are augmented by the top-level augment section"):
        load_recipe("digits-mlp", ["student.augment={crop: 2}"])


def test_distill_hands_callbacks_the_loop(setup):
    """run_distill's callbacks see the run's loop: its student at the start and every training step."""
    from kdlab.train.callbacks import Callback

    recipe, data, teacher = setup

    class Watch(Callback):
        def __init__(self):
            self.models, self.steps, self.ends = [], 0, 0

        def on_fit_start(self, trainer):
            self.models.append(trainer.model)

        def wrap_steps(self, trainer, steps, total):
            for item in steps:
                self.steps += 1
                yield item

        def on_epoch_end(self, trainer, epoch, records):
            self.ends += 1

    watch = Watch()
    result = run_distill(recipe, teacher.model, data, out=False, progress=False, callbacks=[watch])
    batches = -(-len(data.train) // recipe.student.train.batch_size)
    assert watch.models == [result.model]
    assert watch.steps == batches * recipe.student.train.epochs
    assert watch.ends == recipe.student.train.epochs
