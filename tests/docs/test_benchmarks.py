"""docs/benchmarks.md: every command on the page is valid, without training.

Each ``kdlab`` line is parsed by kdlab's own parser and turned into a recipe through the CLI's
override path (``recipe_from_args``); its method is built, and for the feature methods the trainer
is built on the recipe's real models over tiny CIFAR-100 files in the genuine format, which checks
the layer names and builds the adapters from a probe batch (no optimizer step). The page covers all
13 ``crd-*`` recipes, each in both results tables.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from kdlab.cli import build_parser
from kdlab.cli_recipe import recipe_from_args
from kdlab.data import cifar
from kdlab.pipeline import build_role_model, distill_method, prepare_data
from kdlab.recipes import bundled_recipes
from kdlab.teacher import FrozenTeacher
from kdlab.train.build import build_trainer
from tests.conftest import REPO
from tests.data.test_cifar import write_cifar

PAGE = REPO / "docs" / "benchmarks.md"
TEXT = PAGE.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)
LINES = [line.strip() for block in BLOCKS for line in block.splitlines() if line.strip()]
COMMANDS = [line for line in LINES if line.startswith("kdlab ")]
CRD_RECIPES = sorted(n for n in bundled_recipes() if n.startswith("crd-"))
METHODS = ["kd", "fitnets", "at", "rkd", "crd", "dkd"]
# DKD's beta per pair: mdistiller's configs/cifar100/dkd/*.yaml (BETA; 8.0 where a config sets none or none exists)
DKD_BETA = {"crd-resnet56-resnet20": 2.0, "crd-resnet110-resnet32": 2.0, "crd-vgg13-vgg8": 6.0, "crd-vgg13-mobilenetv2": 6.0,
            "crd-wrn_40_2-wrn_16_2": 6.0, "crd-wrn_40_2-wrn_40_1": 6.0}
SMALL_STUDENTS = ("mobilenetv2", "shufflev1", "shufflev2")
TINY = ["device=cpu", "dataset.download=false", "student.train.batch_size=2", "student.train.eval_batch_size=4"]


PARSER = build_parser()


def parse(command: str):
    """The namespace kdlab's own parser makes of ``command`` (a fresh one each call)."""
    argv = shlex.split(command, comments=True)
    assert argv[0] == "kdlab"
    args, extra = PARSER.parse_known_args(argv[1:])
    assert not extra, f"{command}: unknown arguments {extra}"
    return args


def test_the_page_has_every_pair_and_method_once():
    assert len(CRD_RECIPES) == 13 and len(COMMANDS) == 13 * (1 + len(METHODS))
    parsed = [parse(c) for c in COMMANDS]
    for name in CRD_RECIPES:
        mine = [a for a in parsed if a.recipe == name]
        assert [a.command for a in mine] == ["train-student"] + ["distill"] * len(METHODS), name
        assert [Path(a.out).name for a in mine] == ["student", *METHODS]  # one run folder each
        assert [a.method for a in mine[1:]] == [None, *METHODS[1:]]
        assert all(a.teacher_online for a in mine[1:])  # fresh crops and flips every epoch
        assert TEXT.count(f"| `{name}` |") == 1, f"{name} is not in the results tables once"


@pytest.fixture(scope="module")
def tiny_cifar100(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    write_cifar(root, cifar.CIFAR100, n=4)
    return root


@pytest.fixture(scope="module")
def models() -> Dict[str, List]:
    """The recipes' teacher and student, built once per recipe (a trainer hands them back unmodified)."""
    return {}


def _id(command: str) -> str:
    args = parse(command)
    return f"{args.recipe}:{getattr(args, 'method', None) or ('kd' if args.command == 'distill' else args.command)}"


@pytest.mark.parametrize("command", COMMANDS, ids=[_id(c) for c in COMMANDS])
def test_each_command_builds_its_recipe_method_and_layers(command, tiny_cifar100, models):
    args = parse(command)
    assert args.command in ("train-student", "distill")
    args.overrides = [*args.overrides, *TINY, f"dataset.data_dir={tiny_cifar100}"]  # the page's flags, then tiny data
    recipe = recipe_from_args(args, "student")
    name = recipe.name
    student = recipe.student.train
    assert student.epochs == 240  # the batch is the tiny one here; tests/test_recipes_crd.py checks the recipes' 64
    assert student.optimizer.lr == (0.01 if name.endswith(SMALL_STUDENTS) else 0.05)
    if args.command == "train-student":
        return
    method = distill_method(recipe)
    weights = method.term_weights()
    kind = args.method or "kd"
    if kind == "kd":
        assert recipe.distill.method == "hinton" and weights == {"hard": 0.1, "soft": 0.9}
        return
    assert weights["hard"] == 1.0 and weights.get("soft", 0.0) == 0.0  # the references' -r 1 -a 0
    if kind == "dkd":
        assert recipe.distill.temperature == 4.0 and (method.alpha, method.beta, method.warmup) == (1.0, DKD_BETA.get(name, 8.0), 20)
        return
    if name not in models:
        data = prepare_data(recipe)
        models[name] = [data, build_role_model(recipe, "teacher", data), build_role_model(recipe, "student", data)]
    data, teacher, model = models[name]
    trainer = build_trainer(model, method, data, student, teacher=FrozenTeacher(teacher))
    try:
        assert trainer.choices["teacher_source"]  # the trainer is complete: the probe batch went through
    finally:
        trainer.close()
    if kind in ("fitnets", "at"):
        pairs = method.pairs
        assert pairs and all(t.rstrip("0123456789").endswith(("layer", "block", "blocks.")) for t in pairs.values())
        if kind == "fitnets":  # the second stage (RepDistiller --hint_layer 2)
            assert list(pairs.values())[0][-1] == "2" and list(pairs)[0][-1] == "2"


def test_the_gpu_check_lines_parse_with_the_scripts_own_parser():
    spec = importlib.util.spec_from_file_location("gpu_check_page", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_page"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        lines = [shlex.split(line, comments=True) for line in LINES if line.startswith("python benchmarks/gpu_check.py")]
        assert len(lines) == 2
        for argv in lines:
            args = module.parse_args(argv[2:])
            assert args.device in ("cuda", "cpu")
        names = re.search(r"`--checks` runs a subset \((.*?)\)", TEXT, flags=re.S).group(1)
        assert tuple(n.strip(" `\n") for n in names.split(",")) == module.CHECK_NAMES
    finally:
        del sys.modules["gpu_check_page"]
