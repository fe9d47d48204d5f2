"""Wrong teacher checkpoints (issue 9, part 7): accepted, but never silently."""

import pytest

from kdlab.recipes import load_recipe
from kdlab.pipeline import prepare_data, run_distill, run_student, run_teacher

FAST = ["teacher.model.hidden=[32]", "teacher.train.epochs=1", "student.train.epochs=1"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    recipe = load_recipe("digits-mlp", FAST)
    data = prepare_data(recipe)
    run_teacher(recipe, data, out=root / "teacher", progress=False)
    run_student(recipe, data, out=root / "student", progress=False)
    tiny = load_recipe("digits-mlp", FAST + ["teacher.model.hidden=[4]"])
    run_teacher(tiny, data, out=root / "tiny", progress=False)
    return recipe, data, root


def _warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdlab: warning:")]


def test_a_real_teacher_gives_no_warning(checkpoints, capsys):
    recipe, data, root = checkpoints
    run_distill(recipe, root / "teacher" / "best.pt", data, out=False, progress=False)
    assert _warnings(capsys) == []


def test_student_checkpoint_as_teacher_warns_once(checkpoints, capsys):
    recipe, data, root = checkpoints
    run_distill(recipe, root / "student" / "best.pt", data, out=False, progress=False)
    warnings = _warnings(capsys)
    assert len(warnings) == 1 and "was saved as a student, not a teacher" in warnings[0]


def test_smaller_teacher_warns_once(checkpoints, capsys):
    recipe, data, root = checkpoints
    result = run_distill(recipe, root / "tiny" / "last.pt", data, out=False, progress=False)
    warnings = _warnings(capsys)
    assert len(warnings) == 1 and "fewer than the student's" in warnings[0]
    assert result.final_acc > 0  # accepted: the run went on
