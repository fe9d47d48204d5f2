import pytest

from kdlab import ConfigError
from kdlab.config import apply_overrides, bundled_recipes, dump_recipe, load_recipe, recipe_from_dict


def test_bundled_recipes_have_the_published_protocols():
    assert {"mnist-mlp", "mnist-cnn", "digits-mlp"} <= set(bundled_recipes())
    mlp = load_recipe("mnist-mlp")
    assert mlp.teacher.model.params == {"hidden": [1200, 1200], "dropout": 0.5}
    assert mlp.student.model.params == {"hidden": [20, 20], "dropout": 0.0}
    assert (mlp.teacher.train.epochs, mlp.student.train.epochs) == (20, 50)
    for role in (mlp.teacher, mlp.student):
        assert role.train.batch_size == 128 and role.train.optimizer.name == "adam" and role.train.optimizer.lr == 1e-3
    assert (mlp.distill.loss, mlp.distill.temperature, mlp.distill.hard_weight, mlp.distill.soft_weight) == ("hinton", 3.0, 0.5, 0.5)
    cnn = load_recipe("mnist-cnn")
    assert (cnn.teacher.train.epochs, cnn.student.train.epochs) == (6, 6)
    assert cnn.teacher.train.batch_size == 32 and cnn.student.train.optimizer.lr == 1e-4
    assert (cnn.distill.temperature, cnn.distill.hard_weight, cnn.distill.soft_weight) == (7.0, 0.3, 0.7)
    assert cnn.teacher.model.params == {"channels": [64, 256]}


def test_dump_and_reload_round_trip(tmp_path):
    r = load_recipe("mnist-cnn", ["seed=3"])
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(r))
    assert load_recipe(str(path)) == r


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["teacher.train.epoch=3"], r"teacher.train.epoch: unknown key; valid keys here: epochs, batch_size"),
        (["student.train.epochs=ten"], r"student.train.epochs: expected int, got 'ten'"),
        (["student.train.epochs=2.5"], r"student.train.epochs: expected int, got 2.5"),
        (["distill.temperature=0"], r"distill.temperature: must be > 0, got 0.0"),
        (["distill.temperature=-2"], r"distill.temperature: must be > 0"),
        (["distill.soft_weight=-0.5"], r"distill.soft_weight: must be >= 0, got -0.5"),
        (["distill.loss=kl"], r"distill.loss: unknown value 'kl'; choose one of: extra-T, hinton"),
        (["student.model.width=3"], r"student.model.width: unknown parameter for model 'mlp'"),
        (["teacher.train.optimizer.name=adagrad"], r"teacher.train.optimizer.name: unknown value 'adagrad'"),
        (["dataset.val_fraction=1.5"], r"dataset.val_fraction: must be in \[0, 1\)"),
        (["alpha=0.5"], r"alpha: unknown key"),
        (["teacher=3"], r"teacher: expected a mapping"),
    ],
)
def test_invalid_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("mnist-mlp", overrides)


def test_overrides_take_precedence_and_parse_yaml_values():
    r = load_recipe("mnist-mlp", ["student.train.epochs=3", "distill.temperature=4", "teacher.model.hidden=[10, 10]"])
    assert r.student.train.epochs == 3 and r.distill.temperature == 4.0
    assert r.teacher.model.params["hidden"] == [10, 10]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["seed"])


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'mnist-xl'; give a YAML path or one of"):
        load_recipe("mnist-xl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_recipe(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_defaults_are_valid():
    assert recipe_from_dict({}).dataset.name == "digits"
