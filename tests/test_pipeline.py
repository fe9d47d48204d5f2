import pytest
import torch

from kdlab import ConfigError
from kdlab.recipes import load_recipe
from kdlab.pipeline import prepare_data, run_demo, run_distill, run_student, run_teacher
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
    assert h["loss_total"] == pytest.approx(0.5 * h["loss_hard"] + 0.5 * h["loss_soft"], rel=1e-5)
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


def test_demo_table(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    demo = run_demo(recipe, out=tmp_path / "demo", progress=False)
    table = demo.table()
    assert "student (distilled)" in table and "teacher" in table
    assert (tmp_path / "demo" / "teacher" / "best.pt").is_file()
    assert (tmp_path / "demo" / "distill" / "metrics.jsonl").is_file()
    assert isinstance(demo.distilled.model, torch.nn.Module) and not isinstance(demo.distilled.model, FrozenTeacher)


def test_scratch_student(setup):
    recipe, data, _ = setup
    assert run_student(recipe, data, out=False, progress=False).parameters == 64 * 20 + 20 + 20 * 20 + 20 + 210
