"""The bundled method and library-model recipes: listed, printed and validated, their stated
settings, and a few training steps of each on tiny data in the genuine file formats."""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path

import pytest
import torch

from kdlab.cli import main
from kdlab.data import DATASETS, cifar
from kdlab.data.mnist_family import FASHION_MNIST, MNIST, load_idx_dataset
from kdlab.pipeline import prepare_data, run_distill, run_teacher
from kdlab.recipes import bundled_recipes, load_recipe
from kdlab.teacher import FrozenTeacher
from tests.conftest import write_fake_mnist
from tests.data.test_cifar import write_cifar
from tests.optional import require

RECIPES = ["mnist-cnn-fitnets", "mnist-cnn-at", "mnist-cnn-5pct", "fashion-resnet18", "cifar10-resnet"]
NEEDS = {"fashion-resnet18": "torchvision"}

# A couple of steps: one epoch each, small batches, no TensorBoard files.
TINY = ["teacher.train.epochs=1", "student.train.epochs=1", "teacher.train.eval_batch_size=64",
        "student.train.eval_batch_size=64", "teacher.train.tensorboard=false", "student.train.tensorboard=false",
        "dataset.download=false"]


def tiny_idx(monkeypatch, root: Path, spec, n_train: int = 40, n_test: int = 10) -> None:
    """Genuine IDX files of ``n_train``/``n_test`` images under ``root``, and the dataset's loader told
    to expect those counts (the real one insists on 60,000/10,000); parsing is the real code's."""
    write_fake_mnist(root / spec.name, n_train=n_train, n_test=n_test)
    small = dataclasses.replace(spec, n_train=n_train, n_test=n_test)
    monkeypatch.setitem(DATASETS._items, spec.name,
                        lambda data_dir=None, download=True: load_idx_dataset(small, data_dir, download))


def _requirements(name: str) -> None:
    if name in NEEDS:
        require(NEEDS[name])


def tiny(name: str, root: Path, batch: int = 16) -> list[str]:
    return [*TINY, f"dataset.data_dir={root}", f"teacher.train.batch_size={batch}", f"student.train.batch_size={batch}"]


@pytest.mark.parametrize("name", RECIPES)
def test_listed_printed_and_documented(name, capsys, tmp_path):
    _requirements(name)
    assert name in bundled_recipes()
    assert main(["recipes"]) == 0
    assert name in capsys.readouterr().out.split()
    assert main(["recipes", name]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "r.yaml").write_text(printed)
    assert load_recipe(str(tmp_path / "r.yaml")) == load_recipe(name)  # what it prints is the validated recipe
    text = (resources.files("kdlab") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("# ") and len(header) >= 3  # says what it is and where its settings come from
    assert f"name: {name}\n" in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"| `{name}` |" in readme


def test_method_recipes_are_mnist_cnn_plus_their_layer_pairs():
    base = load_recipe("mnist-cnn")
    fit, at = load_recipe("mnist-cnn-fitnets"), load_recipe("mnist-cnn-at")
    for r in (fit, at):
        assert (r.teacher, r.student, r.dataset) == (base.teacher, base.student, base.dataset)
        assert (r.distill.temperature, r.distill.hard_weight, r.distill.soft_weight) == (7.0, 0.3, 0.7)
    assert fit.distill.method == "fitnets"
    assert fit.distill.sections["fitnets"] == {"pairs": {"features.5": "features.5"}, "weight": 100.0, "hint_epochs": 0}
    assert at.distill.method == "at"
    assert at.distill.sections["at"] == {"pairs": {"features.2": "features.2", "features.5": "features.5"},
                                         "weight": 1000.0, "p": 2.0}


def test_cifar_recipe_states_its_schedule():
    r = load_recipe("cifar10-resnet")
    assert r.dataset.name == "cifar10" and r.augment == {"crop": 4, "flip": True}
    assert (r.teacher.model.name, r.teacher.model.params, r.student.model.params) == ("cifar-resnet", {"depth": 56}, {"depth": 20})
    for role in (r.teacher, r.student):
        t = role.train
        assert (t.epochs, t.batch_size) == (200, 128)
        assert (t.optimizer.name, t.optimizer.lr, t.optimizer.momentum, t.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
        assert (t.scheduler.name, t.scheduler.step_size, t.scheduler.gamma) == ("step", 60, 0.2)
    assert (r.distill.method, r.distill.temperature, r.distill.hard_weight, r.distill.soft_weight) == ("hinton", 4.0, 0.1, 0.9)


def test_fashion_resnet18_recipe_states_its_settings():
    require("torchvision")
    r, base = load_recipe("fashion-resnet18"), load_recipe("fashion-cnn")
    assert r.dataset.name == "fashion-mnist" and r.augment == {"crop": 4, "flip": True}
    assert r.teacher.model.name == "torchvision:resnet18" and r.teacher.model.params == {"small_input": True}
    assert "weights" not in r.teacher.model.params  # trained from scratch, nothing downloaded
    assert (r.student, r.distill) == (base.student, base.distill)
    t = r.teacher.train
    assert (t.epochs, t.batch_size, t.optimizer.name, t.optimizer.lr, t.optimizer.weight_decay, t.scheduler.name) == \
        (15, 128, "sgd", 0.1, 5e-4, "cosine")


@pytest.mark.parametrize("name,term", [("mnist-cnn-fitnets", "hint"), ("mnist-cnn-at", "at")])
def test_method_recipe_distills_from_the_command_line(name, term, tmp_path, capsys, monkeypatch):
    """The user's path: `kdlab distill NAME` with the teacher trained into (and taken from) the cache."""
    tiny_idx(monkeypatch, tmp_path / "data", MNIST)
    sets = [a for s in tiny(name, tmp_path / "data") for a in ("--set", s)]
    out = tmp_path / "run"
    assert main(["distill", name, *sets, "--teacher-cache", str(tmp_path / "cache"), "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    loss = records[0][f"loss_{term}"]
    assert math.isfinite(loss) and loss > 0  # the layer pair was tapped and contributes
    assert f"method: {name.split('-')[-1]}" in (out / "config.yaml").read_text()
    capsys.readouterr()


def _online_teacher_run(recipe, data, tmp_path):
    """Distil from the recipe's (1-epoch) teacher, recording the batches the teacher sees."""
    teacher = FrozenTeacher(run_teacher(recipe, data, out=False, progress=False).model)
    seen = []
    handle = teacher.model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    try:
        result = run_distill(recipe, teacher, data, out=tmp_path / "d", progress=False, teacher_online=True)
    finally:
        handle.remove()
    steps = -(-len(data.train) // recipe.student.train.batch_size)
    assert len(seen) == steps  # augmented: the teacher runs on every batch, no logit cache
    assert not any(torch.equal(x, data.train.x[: len(x)]) for x in seen)
    assert math.isfinite(result.fit.history[0]["loss_total"])
    return teacher, result


def test_fashion_resnet18_trains_a_few_steps(tmp_path, monkeypatch):
    require("torchvision")
    tiny_idx(monkeypatch, tmp_path / "data", FASHION_MNIST)
    recipe = load_recipe("fashion-resnet18", tiny("fashion-resnet18", tmp_path / "data"))
    data = prepare_data(recipe)
    assert data.name == "fashion-mnist" and data.in_shape == (1, 28, 28)
    teacher, result = _online_teacher_run(recipe, data, tmp_path)
    stem = teacher.model.conv1
    assert (stem.in_channels, stem.kernel_size, stem.stride) == (1, (3, 3), (1, 1))  # greyscale, CIFAR stem
    assert isinstance(teacher.model.maxpool, torch.nn.Identity)
    assert result.parameters == 9_098
    assert (tmp_path / "d" / "best.pt").is_file()


def test_cifar10_resnet_trains_a_few_steps(tmp_path):
    write_cifar(tmp_path / "data", cifar.CIFAR10, n=4)  # 20 training images, 4 test images
    recipe = load_recipe("cifar10-resnet", tiny("cifar10-resnet", tmp_path / "data", batch=8))
    data = prepare_data(recipe)
    assert data.name == "cifar10" and data.in_shape == (3, 32, 32) and len(data.train) == 20
    teacher, result = _online_teacher_run(recipe, data, tmp_path)
    assert sum(p.numel() for p in teacher.model.parameters()) == 853_018  # resnet56
    assert result.parameters == 269_722  # resnet20
    assert (tmp_path / "d" / "best.pt").is_file()


def test_cifar10_resnet_augmented_teacher_route_its_header_gives(tmp_path, capsys):
    """The header's two commands: resnet56 trained as an (augmented) student, then distilled from."""
    write_cifar(tmp_path / "data", cifar.CIFAR10, n=4)
    sets = [a for s in tiny("cifar10-resnet", tmp_path / "data", batch=8) for a in ("--set", s)]
    assert main(["train-student", "cifar10-resnet", *sets, "--set", "student.model.depth=56",
                 "--out", str(tmp_path / "t56"), "--no-progress"]) == 0
    assert main(["distill", "cifar10-resnet", *sets, "--teacher", str(tmp_path / "t56" / "best.pt"),
                 "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "was saved as a student, not a teacher" in err
    info = json.loads((tmp_path / "d" / "run.json").read_text())
    assert info["teacher_checkpoint"] == str((tmp_path / "t56" / "best.pt").resolve())
    assert len((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()) == 1


def test_method_recipes_share_mnist_cnn_s_cached_teacher(tmp_path, monkeypatch):
    """Same teacher key, so a teacher cached by mnist-cnn (or either method recipe) serves all three."""
    from kdlab.teacher_cache import teacher_key

    tiny_idx(monkeypatch, tmp_path / "data", MNIST)
    sets = [f"dataset.data_dir={tmp_path / 'data'}", "dataset.download=false"]
    data = prepare_data(load_recipe("mnist-cnn", sets))
    keys = [teacher_key(load_recipe(name, sets), data) for name in ("mnist-cnn", "mnist-cnn-fitnets", "mnist-cnn-at")]
    assert keys[0] == keys[1] == keys[2]
    assert teacher_key(load_recipe("mnist-cnn-at", [*sets, "teacher.train.epochs=5"]), data) != keys[0]
