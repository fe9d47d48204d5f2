"""The crd-* recipes: CRD's CIFAR-100 teacher–student pairs, derived from one base (``_crd-cifar100``);
each listed, validated, holding CRD's schedule, and trained 2 steps (teacher and student) on tiny
CIFAR-100 files in the genuine format."""

from __future__ import annotations

import json
import math

import pytest

from kdlab import ConfigError
from kdlab.cli import main
from kdlab.data import cifar
from kdlab.pipeline import prepare_data, run_distill
from kdlab.recipes import bundled_recipes, load_recipe, merge_recipe
from tests.data.test_cifar import write_cifar

# CRD (Tian et al. 2020) Table 1 (same architecture style) and Table 2 (different styles)
PAIRS = [("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
         ("vgg13", "vgg8"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"),
         ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
         ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
NAMES = [f"crd-{t.lower()}-{s.lower()}" for t, s in PAIRS]
SMALL_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}

TINY = ["device=cpu", "dataset.download=false", "teacher.train.epochs=1", "student.train.epochs=1",
        "teacher.train.batch_size=2", "student.train.batch_size=2", "teacher.train.eval_batch_size=4",
        "student.train.eval_batch_size=4", "teacher.train.tensorboard=false", "student.train.tensorboard=false"]


@pytest.mark.parametrize("pair, name", list(zip(PAIRS, NAMES)), ids=NAMES)
def test_each_pair_is_listed_and_holds_crds_schedule(pair, name, capsys):
    assert name in bundled_recipes() and "_crd-cifar100" not in bundled_recipes()
    assert main(["recipes"]) == 0 and name in capsys.readouterr().out.split()
    r = load_recipe(name)
    assert (r.name, r.dataset.name, r.teacher.model.name, r.student.model.name) == (name, "cifar100", *pair)
    for role in (r.teacher, r.student):
        t = role.train
        assert (t.epochs, t.batch_size, t.optimizer.name, t.optimizer.momentum, t.optimizer.weight_decay) == (240, 64, "sgd", 0.9, 5e-4)
        assert (t.scheduler.name, t.scheduler.milestones, t.scheduler.gamma) == ("multistep", [150, 180, 210], 0.1)
    assert r.teacher.train.optimizer.lr == 0.05
    assert r.student.train.optimizer.lr == (0.01 if pair[1] in SMALL_STUDENTS else 0.05)
    assert r.augment == r.teacher.augment == {"crop": 4, "flip": True}
    assert (r.distill.method, r.distill.temperature, r.distill.hard_weight, r.distill.soft_weight) == ("hinton", 4.0, 0.1, 0.9)


def test_base_merges_sections_key_by_key_and_refuses_a_cycle(tmp_path):
    assert merge_recipe({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"c": 3}, "d": [2]}) == {"a": {"b": 1, "c": 3}, "d": [2]}
    (tmp_path / "x.yaml").write_text("base: y.yaml\nname: x\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\nname: y\n")
    with pytest.raises(ConfigError, match="is a cycle"):
        load_recipe(str(tmp_path / "x.yaml"))
    (tmp_path / "z.yaml").write_text("base: crd-resnet56-resnet20\nname: mine\nstudent: {model: {name: resnet8}}\n")
    mine = load_recipe(str(tmp_path / "z.yaml"))
    assert (mine.name, mine.student.model.name, mine.teacher.model.name) == ("mine", "resnet8", "resnet56")
    (tmp_path / "w.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base: expected a bundled recipe name or a YAML path"):
        load_recipe(str(tmp_path / "w.yaml"))


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    write_cifar(root, cifar.CIFAR100, n=4)  # 4 training and 4 test images: 2 steps of 2
    return root


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("name", NAMES)
def test_each_pair_trains_two_steps_through_the_teacher_cache(name, cifar100, tmp_path, teacher_cache):
    """``kdlab distill NAME`` without a teacher: the cache trains the (augmented) teacher, or reuses the one an
    earlier pair with the same teacher trained (one cache for the module), then the student."""
    recipe = load_recipe(name, [*TINY, f"dataset.data_dir={cifar100}"])
    data = prepare_data(recipe)
    assert data.name == "cifar100" and data.in_shape == (3, 32, 32) and len(data.train) == 4
    result = run_distill(recipe, None, data, out=tmp_path / "d", progress=False, teacher_cache=teacher_cache,
                         log=lambda message: None)
    (record,) = result.fit.history
    assert math.isfinite(record["loss_total"]) and record["loss_soft"] > 0
    assert (tmp_path / "d" / "best.pt").is_file()
    (entry,) = [p for p in teacher_cache.glob(f"cifar100-{recipe.teacher.model.name}-*") if p.is_dir()]
    assert json.loads((entry / "key.json").read_text())["teacher"]["augment"] == {"crop": 4, "flip": True}


# The references' layers per pair: FitNets hints RepDistiller's feat[2] (--hint_layer 2), AT pairs feat[1:-1]
# in order (zip); in kdlab's module names (MobileNetV2's feat[1:5] are the outputs of blocks 1, 2, 4 and 6).
STAGES = {"resnet": ["layer1", "layer2", "layer3"], "wrn": ["block1", "block2", "block3"], "vgg": [f"block{i}" for i in range(1, 5)],
          "ResNet50": [f"layer{i}" for i in range(1, 5)], "MobileNetV2": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
          "Shuffle": ["layer1", "layer2", "layer3"]}


def _stages(model: str):
    return next(v for k, v in STAGES.items() if model.startswith(k))


@pytest.mark.parametrize("pair, name", list(zip(PAIRS, NAMES)), ids=NAMES)
def test_each_pair_holds_the_references_fitnets_and_at_layers(pair, name):
    sections = load_recipe(name).distill.sections
    t, s = _stages(pair[0]), _stages(pair[1])
    assert sections["fitnets"] == {"pairs": {s[1]: t[1]}}
    assert sections["at"] == {"pairs": dict(zip(s, t))}
