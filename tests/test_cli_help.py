"""First contact: what `kdlab --help` and every command's --help say, checked against what happens."""

from __future__ import annotations

import json
import re

import pytest

from kdlab.cli import build_parser, main
from kdlab.cli_help import EXAMPLES
from kdlab.data import cifar, dataset_shape, load_dataset
from kdlab.data.mnist_family import FASHION_MNIST, MNIST
from tests.data.test_cifar import write_cifar
from tests.test_recipes import tiny_idx


def commands() -> dict:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(sub.choices)


def help_of(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_help_lists_every_command_on_one_line_and_points_at_the_docs(capsys, monkeypatch):
    text = help_of([], capsys, monkeypatch)
    for name in commands():
        assert re.search(rf"^    {re.escape(name)} +\S", text, re.M), f"{name} not listed on one line:\n{text}"
    assert "docs/" in text and "kdlab demo" in text


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_has_an_example_that_parses(name, capsys, monkeypatch):
    text = help_of([name], capsys, monkeypatch)
    example = EXAMPLES[name]
    assert f"Example:\n  {example}\n" in text
    argv = example.split()[1:]
    assert argv[0] == name
    args, extra = build_parser().parse_known_args(argv)  # the example is valid for this parser
    assert extra == [] and args.command == name


def test_distill_help_says_where_the_teacher_s_outputs_come_from(tmp_path, capsys, monkeypatch):
    """Each case the help names, run on the digits: run.json's teacher_source is what the help says."""
    text = " ".join(help_of(["distill"], capsys, monkeypatch).split())
    assert "one pass over the training set" in text and "teacher signal store" in text
    assert "runs on every batch instead with --teacher-online" in text
    monkeypatch.setenv("KDLAB_TEACHER_CACHE", str(tmp_path / "cache"))
    tiny = ["--teacher-epochs", "1", "--epochs", "1", "--no-progress", "--no-tensorboard"]
    fitnets = ["--method", "fitnets", "--set", "distill.fitnets={pairs: {net.1: net.1}}"]
    cases = {"hinton": ([], "cached logits"), "fitnets": (fitnets, "stored signals"),
             "online": ([*fitnets, "--teacher-online"], "online")}
    for name, (flags, source) in cases.items():
        assert main(["distill", "digits-mlp", *tiny, *flags, "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "run.json").read_text())["teacher_source"] == source, name
    capsys.readouterr()


@pytest.mark.parametrize("recipe, shape", [("mnist-cnn", "[1, 28, 28]"), ("cifar10-resnet", "[3, 32, 32]")])
def test_layers_needs_no_dataset_files(recipe, shape, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDLAB_DATA_DIR", str(tmp_path))  # empty: nothing to read
    assert main(["layers", recipe, "--role", "student", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert f"input {shape}" in out and "params" in out
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or written


def test_declared_shapes_are_what_the_loaders_give(tmp_path, monkeypatch):
    for spec in (MNIST, FASHION_MNIST):
        tiny_idx(monkeypatch, tmp_path, spec)
    write_cifar(tmp_path, cifar.CIFAR10)
    for name in ("digits", "mnist", "fashion-mnist", "cifar10"):
        data = load_dataset(name, tmp_path, download=False)
        declared = dataset_shape(name)
        assert (declared.in_shape, declared.num_classes) == (data.in_shape, data.num_classes), name
