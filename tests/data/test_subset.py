"""dataset.student_subset: a class-stratified share drawn from its own seed, one-line errors, and
the students (scratch and distilled) training on it while the teacher keeps the whole split."""

from __future__ import annotations

import json

import pytest
import torch

from kdlab import ConfigError
from kdlab.config import StudentSubsetConfig
from kdlab.data.subset import subset_facts, subset_indices
from kdlab.pipeline import prepare_data, run_distill, run_student, student_data
from kdlab.recipes import load_recipe
from kdlab.teacher_cache import teacher_cache_path

# class c has 10 * (c + 1) examples: 10, 20, ..., 100 (unequal classes, as in MNIST)
Y = torch.cat([torch.full((10 * (c + 1),), c) for c in range(10)])[torch.randperm(550, generator=torch.Generator().manual_seed(3))]
FAST = ["teacher.model.hidden=[32]", "teacher.train.epochs=1", "student.train.epochs=1", "dataset.student_subset.fraction=0.1"]


def test_each_class_keeps_its_share_at_least_one():
    idx = subset_indices(Y, StudentSubsetConfig(fraction=0.1), 10)
    assert Y[idx].bincount(minlength=10).tolist() == [c + 1 for c in range(10)]  # round(0.1 * 10 (c + 1))
    assert torch.equal(idx, idx.unique())  # sorted, no repeats
    tiny = subset_indices(Y, StudentSubsetConfig(fraction=0.001), 10)
    assert Y[tiny].bincount(minlength=10).tolist() == [1] * 10
    missing = subset_indices(Y[Y != 4], StudentSubsetConfig(fraction=0.5), 10)  # a class with no example stays empty
    assert Y[Y != 4][missing].bincount(minlength=10)[4] == 0 and len(missing) == sum(round(5 * (c + 1)) for c in range(10) if c != 4)


def test_the_subset_depends_on_its_own_seed_alone():
    cfg = StudentSubsetConfig(fraction=0.3, seed=7)
    a = subset_indices(Y, cfg, 10)
    torch.manual_seed(123)  # the global RNG does not matter
    assert torch.equal(a, subset_indices(Y, cfg, 10))
    assert not torch.equal(a, subset_indices(Y, StudentSubsetConfig(fraction=0.3, seed=8), 10))
    facts = subset_facts(Y, a, cfg, 10)
    assert facts["examples"] == len(a) and facts["of"] == 550 and sum(facts["class_counts"]) == len(a)
    assert facts["indices_sha256"] == subset_facts(Y, subset_indices(Y, cfg, 10), cfg, 10)["indices_sha256"]


@pytest.mark.parametrize("override,message", [
    ("dataset.student_subset.fraction=0", r"dataset.student_subset.fraction: must be a number in \(0, 1\], got 0.0"),
    ("dataset.student_subset.fraction=1.5", r"dataset.student_subset.fraction: must be a number in \(0, 1\], got 1.5"),
    ("dataset.student_subset.fraction=nan", r"dataset.student_subset.fraction: must be a number in \(0, 1\]"),
    ("dataset.student_subset.seed=-1", r"dataset.student_subset.seed: must be an integer in \[0, 4294967295\], got -1"),
    ("dataset.student_subset.seed=1.5", r"dataset.student_subset.seed: expected int, got 1.5"),
    ("dataset.student_subset.frac=0.1", r"dataset.student_subset.frac: unknown key; valid keys here: fraction, seed"),
])
def test_bad_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("digits-mlp", [override])


def test_student_data_cuts_logits_alike_and_only_once():
    recipe = load_recipe("digits-mlp", FAST)
    data = prepare_data(recipe)
    logits = torch.arange(len(data.train), dtype=torch.float32)[:, None].expand(-1, data.num_classes)
    cut, cut_logits = student_data(recipe, data, logits)
    assert len(cut.train) == cut.info["student_subset"]["examples"] < len(data.train)
    assert torch.equal(data.train.x[cut_logits[:, 0].long()], cut.train.x)  # row i of the logits is still example i's
    assert len(cut.test) == len(data.test) and "student_subset" not in data.info  # the test split and the input untouched
    again, again_logits = student_data(recipe, cut, cut_logits)  # already cut: unchanged
    assert again is cut and again_logits is cut_logits
    whole = load_recipe("digits-mlp")
    assert student_data(whole, data, logits) == (data, logits)


def test_students_train_on_the_subset_the_teacher_on_everything(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    scratch = run_student(recipe, out=tmp_path / "scratch", progress=False)
    distilled = run_distill(load_recipe("digits-mlp", FAST + ["seed=1"]), out=tmp_path / "kd", teacher_cache=tmp_path / "tc",
                            progress=False)
    a = json.loads((scratch.path / "run.json").read_text())["student_subset"]
    b = json.loads((distilled.path / "run.json").read_text())["student_subset"]
    assert a == b  # another run seed, the same examples (indices_sha256 included)
    assert abs(a["examples"] - 0.1 * a["of"]) <= 5 and a["fraction"] == 0.1  # 10 classes, each rounded
    steps = -(-a["examples"] // recipe.student.train.batch_size)
    assert scratch.fit.step_losses.shape[0] == steps == distilled.fit.step_losses.shape[0]
    # the teacher was trained and cached on the whole training split: its key is the subset-free recipe's
    whole = load_recipe("digits-mlp", [x for x in FAST if "student_subset" not in x] + ["seed=1"])
    assert teacher_cache_path(whole, tmp_path / "tc").is_dir()


def test_mnist_cnn_5pct_is_mnist_cnn_with_its_students_on_5_percent():
    small, base = load_recipe("mnist-cnn-5pct"), load_recipe("mnist-cnn")
    assert small.dataset.student_subset == StudentSubsetConfig(fraction=0.05, seed=0)
    assert (small.teacher.model, small.student.model, small.distill) == (base.teacher.model, base.student.model, base.distill)
    assert small.student.train.epochs > base.student.train.epochs  # 47 steps an epoch: more epochs to converge
