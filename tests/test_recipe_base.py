"""Recipe files that start from another recipe (``base:``), and recipe files that name no dataset."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdlab import ConfigError
from kdlab.recipes import load_recipe, merge_recipe


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_merge_is_deep_and_lists_replace():
    base = {"a": {"b": 1, "c": [1, 2, 3]}, "d": 4}
    child = {"a": {"c": [9]}, "e": 5}
    assert merge_recipe(base, child) == {"a": {"b": 1, "c": [9]}, "d": 4, "e": 5}
    assert base == {"a": {"b": 1, "c": [1, 2, 3]}, "d": 4}  # inputs untouched


def test_a_section_naming_another_name_replaces_the_base_section():
    base = {"name": "x", "teacher": {"model": {"name": "cnn", "channels": [64, 256]}}}
    child = {"name": "y", "teacher": {"model": {"name": "mlp", "hidden": [10]}}}
    assert merge_recipe(base, child)["teacher"]["model"] == {"name": "mlp", "hidden": [10]}
    same = {"teacher": {"model": {"name": "cnn", "channels": [8, 16]}}}
    assert merge_recipe(base, same)["teacher"]["model"] == {"name": "cnn", "channels": [8, 16]}


def test_base_recipe_then_only_the_changed_keys(tmp_path):
    path = write(tmp_path / "short.yaml", "base: mnist-cnn\nstudent:\n  train: {epochs: 2}\n"
                                          "  model: {channels: [4, 8]}\ndistill: {temperature: 4.0}\n")
    got, cnn = load_recipe(path), load_recipe("mnist-cnn")
    assert got.name == "short"  # the run folder is named after the file, not its base
    assert got.student.train.epochs == 2 and got.student.model.params == {"channels": [4, 8]}
    assert got.distill.temperature == 4.0
    # everything else is the base's
    assert got.teacher == cnn.teacher and got.dataset == cnn.dataset
    assert got.student.train.batch_size == cnn.student.train.batch_size
    assert (got.distill.hard_weight, got.distill.soft_weight) == (cnn.distill.hard_weight, cnn.distill.soft_weight)


def test_base_of_a_base_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "mid.yaml", "base: digits-mlp\nname: mid\nseed: 7\n")
    path = write(tmp_path / "sub" / "leaf.yaml", "base: ../mid.yaml\nstudent: {train: {epochs: 3}}\n")
    got = load_recipe(path)
    assert (got.name, got.seed, got.student.train.epochs, got.dataset.name) == ("leaf", 7, 3, "digits")
    assert load_recipe(path, ["seed=2"]).seed == 2  # --set still has the last word


def test_a_cycle_of_bases_is_one_line(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    path = write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="is a cycle"):
        load_recipe(path)


@pytest.mark.parametrize("base, message", [("no-such-recipe", "unknown recipe 'no-such-recipe'"),
                                           ("missing.yaml", "not found"), ("[1, 2]", "base: expected a bundled recipe")])
def test_a_bad_base_is_named(tmp_path, base, message):
    path = write(tmp_path / "r.yaml", f"base: {base}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(path)
    assert "\n" not in str(info.value) and "r.yaml" in str(info.value)


def test_a_file_without_a_dataset_is_refused(tmp_path):
    path = write(tmp_path / "r.yaml", "student:\n  train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match="names no dataset.*base: mnist-cnn"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="names no dataset"):
        load_recipe(write(tmp_path / "r2.yaml", "dataset: {val_fraction: 0.1}\n"))
    # the dataset may come from the command line too
    assert load_recipe(path, ["dataset.name=digits"]).dataset.name == "digits"
    assert load_recipe("digits-mlp").dataset.name == "digits"  # bundled recipes are complete


def test_cli_refuses_a_file_without_a_dataset_in_one_line(tmp_path):
    path = write(tmp_path / "r.yaml", "seed: 1\n")
    proc = subprocess.run([sys.executable, "-m", "kdlab", "recipes", path], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "names no dataset" in proc.stderr and proc.stdout == ""
