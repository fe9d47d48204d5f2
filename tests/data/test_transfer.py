"""distill.transfer: class filters, a seeded fraction, one-line errors, and the distilled student
training on the transfer set alone (with soft targets only when labels: false)."""

from __future__ import annotations

import json

import pytest
import torch

from kdlab import ConfigError
from kdlab.config import TransferConfig
from kdlab.data.transfer import transfer_indices, transfer_split
from kdlab.pipeline import distill_method, run_distill, run_teacher
from kdlab.recipes import load_recipe

Y = torch.arange(100) % 10  # ten of each class


def test_exclude_and_keep_classes():
    idx = transfer_indices(Y, TransferConfig(exclude_classes=[3]), 10, seed=0)
    assert len(idx) == 90 and 3 not in Y[idx].tolist() and torch.equal(idx, idx.sort().values)
    idx = transfer_indices(Y, TransferConfig(classes=[7, 8]), 10, seed=0)
    assert sorted(set(Y[idx].tolist())) == [7, 8] and len(idx) == 20


def test_fraction_is_seeded_and_drawn_from_the_kept_classes():
    cfg = TransferConfig(exclude_classes=[0], fraction=0.5)
    a, b = transfer_indices(Y, cfg, 10, seed=1), transfer_indices(Y, cfg, 10, seed=1)
    assert torch.equal(a, b) and len(a) == 45 and 0 not in Y[a].tolist()
    assert not torch.equal(a, transfer_indices(Y, cfg, 10, seed=2))
    torch.manual_seed(5)  # the global RNG does not matter
    assert torch.equal(a, transfer_indices(Y, cfg, 10, seed=1))


@pytest.mark.parametrize("overrides,message", [
    (["distill.transfer.classes=[1]", "distill.transfer.exclude_classes=[2]"], "give classes .* or exclude_classes .*, not both"),
    (["distill.transfer.classes=[]"], "an empty list keeps no example"),
    (["distill.transfer.exclude_classes=[3, 3]"], "a class is listed twice"),
    (["distill.transfer.classes=[-1]"], "class indices must be integers >= 0"),
    (["distill.transfer.fraction=0"], r"distill.transfer.fraction: must be a number in \(0, 1\], got 0.0"),
    (["distill.transfer.fraction=1.5"], r"must be a number in \(0, 1\]"),
    (["distill.transfer.labels=false", "distill.soft_weight=0"], "soft targets alone.*soft_weight is 0"),
    (["distill.transfer.clases=[1]"], "distill.transfer.clases: unknown key; valid keys here: classes, exclude_classes"),
    (["distill.transfer.classes=three"], r"distill.transfer.classes: expected list of int, got 'three'"),
])
def test_bad_sections_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("digits-mlp", overrides)


def test_classes_the_dataset_lacks_and_empty_sets_are_refused():
    with pytest.raises(ConfigError, match=r"class 12 does not exist; the dataset has classes 0..9"):
        transfer_indices(Y, TransferConfig(classes=[12]), 10, 0)
    with pytest.raises(ConfigError, match="every class is excluded"):
        transfer_indices(Y, TransferConfig(exclude_classes=list(range(10))), 10, 0)
    with pytest.raises(ConfigError, match="keeps no training example"):
        transfer_indices(Y[Y != 4], TransferConfig(classes=[4]), 10, 0)


def test_split_keeps_test_and_validation(digits):
    idx = transfer_indices(digits.train.y, TransferConfig(classes=[1]), 10, 0)
    cut = transfer_split(digits, idx)
    assert torch.equal(cut.test.y, digits.test.y) and set(cut.train.y.tolist()) == {1}
    assert "fingerprint" not in cut.info and cut.info["mean"] == digits.info["mean"]


def test_distilled_student_trains_on_the_transfer_set_and_scratch_does_not(digits, tmp_path):
    r = load_recipe("digits-mlp", ["teacher.train.epochs=1", "student.train.epochs=1", "distill.transfer.exclude_classes=[3]",
                                   "teacher.train.tensorboard=false", "student.train.tensorboard=false"])
    teacher = run_teacher(r, digits, out=False, progress=False)
    run_distill(r, teacher.model, digits, out=tmp_path / "d", progress=False)
    info = json.loads((tmp_path / "d" / "run.json").read_text())["transfer"]
    n3 = int((digits.train.y == 3).sum())
    assert info["examples"] == len(digits.train) - n3 and info["class_counts"][3] == 0 and info["labels"] is True
    assert info["of"] == len(digits.train)


def test_unlabelled_transfer_sets_train_on_soft_targets_alone():
    r = load_recipe("digits-mlp", ["distill.transfer.labels=false"])
    assert r.distill.transfer.active
    m = distill_method(r)
    assert m.term_weights()["hard"] == 0.0 and m.term_weights()["soft"] == r.distill.soft_weight
    plain = load_recipe("digits-mlp")
    assert plain.distill.hard_weight > 0 and distill_method(plain).term_weights()["hard"] == plain.distill.hard_weight
    assert not plain.distill.transfer.active


def test_compare_refuses_a_transfer_set(digits):
    from kdlab.study.compare import compare

    with pytest.raises(ConfigError, match="distill.transfer is not supported here"):
        compare(load_recipe("digits-mlp", ["distill.transfer.classes=[1, 2]"]), "hinton", 1, data=digits)
