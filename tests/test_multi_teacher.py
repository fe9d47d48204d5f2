"""A list of teachers in a recipe: each cached on its own, the student learns from their mean."""

import json

import pytest
import torch

from kdlab import ConfigError
from kdlab.pipeline import prepare_data, run_distill
from kdlab.recipes import load_recipe
from kdlab.teacher import TeacherEnsemble

TWO = ["teachers=[{model: {name: mlp, hidden: [16]}, train: {epochs: 1}}, "
       "{model: {name: cnn, channels: [4, 8]}, train: {epochs: 1}}]", "student.train.epochs=1"]


def test_two_teachers_of_different_architectures_are_averaged(tmp_path):
    recipe = load_recipe("digits-mlp", TWO)
    data = prepare_data(recipe)
    lines = []
    result = run_distill(recipe, None, data, out=tmp_path / "run", progress=False, teacher_cache=tmp_path / "cache", log=lines.append)
    assert "2 teachers" in lines[-1] and "test acc of their mean" in lines[-1]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(info["teacher_checkpoints"]) == 2 and len(info["teacher_sha256s"]) == 2
    assert result.fit.final["epoch"] == 1
    # the ensemble's logits are the plain mean of its members'
    members = [torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)]
    x = torch.randn(5, 3)
    torch.testing.assert_close(TeacherEnsemble(members)(x), (members[0](x) + members[1](x)) / 2)
    # a second run reuses both cached teachers
    again = []
    run_distill(recipe, None, data, out=False, progress=False, teacher_cache=tmp_path / "cache", log=again.append)
    assert again[-1].count("reused") == 2


def test_a_multi_teacher_run_resumes_with_its_own_teachers(tmp_path):
    from tests.catalogue.harness import run_cli

    flags = ["--set", TWO[0], "--teacher-cache", str(tmp_path / "cache"), "--no-progress"]
    first = run_cli(["distill", "digits-mlp", *flags, "--epochs", "1", "--out", "run"], tmp_path)
    assert first.code == 0, first.err
    more = run_cli(["distill", "--out", "run", "--resume", "--epochs", "2", "--no-progress"], tmp_path)
    assert more.code == 0, more.err
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_teachers_are_validated_one_line():
    with pytest.raises(ConfigError, match=r"teachers\[1\].model.name: unknown value 'resnet'"):
        load_recipe("digits-mlp", ["teachers=[{model: {name: mlp}}, {model: {name: resnet}}]"])
    with pytest.raises(ConfigError, match=r"teachers\[0\].train.epochs"):
        load_recipe("digits-mlp", ["teachers=[{train: {epochs: 0}}]"])


def test_a_teacher_given_as_a_checkpoint_in_the_recipe_self_distillation(tmp_path):
    """Born-again style: the student's own earlier run is the teacher, named in the recipe."""
    from kdlab.pipeline import run_student

    base = load_recipe("digits-mlp", ["student.train.epochs=1"])
    data = prepare_data(base)
    first = run_student(base, data, out=tmp_path / "gen0", progress=False)
    recipe = load_recipe("digits-mlp", ["student.train.epochs=1", f"teacher.checkpoint={tmp_path / 'gen0' / 'best.pt'}"])
    lines = []
    run_distill(recipe, None, data, out=tmp_path / "gen1", progress=False, teacher_cache=tmp_path / "cache", log=lines.append)
    assert lines[-1].startswith(f"teacher: checkpoint {tmp_path / 'gen0' / 'best.pt'}")
    assert f"test acc {100 * first.best_acc:.2f}%" in lines[-1]
    info = json.loads((tmp_path / "gen1" / "run.json").read_text())
    assert info["teacher_checkpoint"] == str((tmp_path / "gen0" / "best.pt").resolve())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing trained or cached
    mixed = load_recipe("digits-mlp", ["student.train.epochs=1", "teachers=[{checkpoint: " + str(tmp_path / "gen0" / "best.pt") + "}, "
                                       "{model: {name: mlp, hidden: [16]}, train: {epochs: 1}}]"])
    lines = []
    run_distill(mixed, None, data, out=False, progress=False, teacher_cache=tmp_path / "cache", log=lines.append)
    assert "2 teachers" in lines[-1] and "(checkpoint)" in lines[-1] and "(trained)" in lines[-1]


def test_a_student_checkpoint_key_is_refused():
    with pytest.raises(ConfigError, match="student.checkpoint: only teachers take a checkpoint"):
        load_recipe("digits-mlp", ["student.checkpoint=x.pt"])
