import pytest

from kdlab import ConfigError
from kdlab.recipes import apply_overrides, bundled_recipes, dump_recipe, load_recipe, recipe_from_dict


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
        (["student.train.epochs=true"], r"student.train.epochs: expected int, got True"),
        (["distill.temperature=0"], r"distill.temperature: must be a finite number > 0, got 0.0"),
        (["distill.temperature=-2"], r"distill.temperature: must be a finite number > 0"),
        (["distill.soft_weight=-0.5"], r"distill.soft_weight: must be a finite number >= 0, got -0.5"),
        (["distill.loss=kl"], r"distill.loss: unknown value 'kl'; choose one of: extra-T, hinton"),
        (["student.model.width=3"], r"student.model.width: unknown parameter for model 'mlp'"),
        (["teacher.train.optimizer.name=adagrad"], r"teacher.train.optimizer.name: unknown value 'adagrad'"),
        (["dataset.val_fraction=1.5"], r"dataset.val_fraction: must be a number in \[0, 1\), got 1.5"),
        (["alpha=0.5"], r"alpha: unknown key"),
        (["teacher=3"], r"override 'teacher=3': teacher is a section; set one of its keys, e.g. teacher.model.name=VALUE"),
        (["teacher="], r"teacher is a section"),
        (["teacher.model=cnn"], r"teacher.model is a section"),
        (["seed.x=1"], r"override 'seed.x=1': seed is not a section"),
        # non-finite values, in YAML's spelling and in the strings Python's float() accepts
        (["distill.soft_weight=.nan"], r"distill.soft_weight: must be a finite number >= 0, got nan"),
        (["distill.hard_weight=nan"], r"distill.hard_weight: must be a finite number >= 0, got nan"),
        (["distill.temperature=.inf"], r"distill.temperature: must be a finite number > 0, got inf"),
        (["distill.temperature=inf"], r"distill.temperature: must be a finite number > 0, got inf"),
        (["distill.temperature=-.inf"], r"distill.temperature: must be a finite number > 0, got -inf"),
        (["distill.hard_weight=1e308", "distill.soft_weight=1e308"], r"distill.hard_weight \+ distill.soft_weight overflows"),
        (["distill.weight_schedule.rate=.nan"], r"distill.weight_schedule.rate: must be a finite number >= 0, got nan"),
        (["distill.temperature_schedule.min=.inf"], r"distill.temperature_schedule.min: must be a finite number > 0, got inf"),
        (["distill.temperature_schedule.step=.nan"], r"distill.temperature_schedule.step: must be a finite number >= 0"),
        (["dataset.val_fraction=.nan"], r"dataset.val_fraction: must be a number in \[0, 1\), got nan"),
        (["student.train.optimizer.lr=.nan"], r"student.train.optimizer.lr: must be a finite number > 0, got nan"),
        (["student.train.optimizer.lr=Infinity"], r"student.train.optimizer.lr: must be a finite number > 0, got inf"),
        (["student.train.optimizer.lr=1" + "0" * 400], r"student.train.optimizer.lr: must be a finite number, got an integer with 401 digits"),
        (["teacher.train.optimizer.weight_decay=.inf"], r"teacher.train.optimizer.weight_decay: must be a finite number >= 0, got inf"),
        (["teacher.train.optimizer.momentum=1"], r"teacher.train.optimizer.momentum: must be a number in \[0, 1\), got 1.0"),
        (["teacher.train.optimizer.momentum=.nan"], r"teacher.train.optimizer.momentum: must be a number in \[0, 1\), got nan"),
        (["student.train.grad_clip=.inf"], r"student.train.grad_clip: must be a finite number > 0, got inf"),
        (["student.train.scheduler.gamma=.nan"], r"student.train.scheduler.gamma: must be a finite number > 0, got nan"),
        # integers that would overflow torch / numpy / Optuna
        (["seed=-1"], r"seed: must be an integer in \[0, 4294967295\] \(the range numpy and Optuna accept\), got -1"),
        (["seed=4294967296"], r"seed: must be an integer in \[0, 4294967295\]"),
        (["seed=18446744073709551616"], r"seed: must be an integer in \[0, 4294967295\]"),
        (["teacher.train.epochs=0"], r"teacher.train.epochs: must be an integer in \[1, 2147483647\], got 0"),
        (["teacher.train.epochs=2147483648"], r"teacher.train.epochs: must be an integer in \[1, 2147483647\], got 2147483648"),
        (["student.train.batch_size=99999999999999999999"], r"student.train.batch_size: must be an integer in \[1, 2147483647\]"),
        (["student.train.eval_batch_size=-5"], r"student.train.eval_batch_size: must be an integer in \[1, 2147483647\]"),
        (["student.train.scheduler.step_size=2147483648"], r"student.train.scheduler.step_size: must be an integer in \[1, 2147483647\]"),
        # model parameters, checked when the recipe loads
        (["teacher.model.dropout=.nan"], r"teacher.model.dropout: must be a number in \[0, 1\), got nan"),
        (["student.model.dropout=1"], r"student.model.dropout: must be a number in \[0, 1\), got 1"),
        (["student.model.dropout=yes"], r"student.model.dropout: must be a number in \[0, 1\), got True"),
        (["teacher.model={name: cnn, dropout: .inf}"], r"teacher.model.dropout: must be a number in \[0, 1\), got inf"),
        (["student.model.hidden=[]"], r"student.model.hidden: must be a non-empty list of integers in \[1, 2147483647\]"),
        (["student.model.hidden=[2147483648]"], r"student.model.hidden: must be a non-empty list of integers"),
        (["student.model.hidden=20"], r"student.model.hidden: must be a non-empty list of integers"),
        (["teacher.model={name: cnn, channels: [8, 0]}"], r"teacher.model.channels: must be a non-empty list of integers"),
        # names and paths that would fail later
        (["name=a/b"], r"name: must be a non-empty name usable in a folder name"),
        (["name=''"], r"name: must be a non-empty name"),
        (["name=123"], r"name: expected str, got 123"),
        (["out_dir=''"], r"out_dir: must be a usable folder path"),
        (['dataset.data_dir="a\\0b"'], r"dataset.data_dir: must be a usable folder path"),
    ],
)
def test_invalid_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("mnist-mlp", overrides)


@pytest.mark.parametrize(
    "override,value",
    [("student.train.optimizer.lr=1e-4", 1e-4), ("student.train.optimizer.lr=2E-3", 2e-3), ("student.train.optimizer.lr=3", 3.0)],
)
def test_scientific_notation_without_a_dot_is_a_number(override, value):
    """PyYAML (YAML 1.1) reads 1e-4 as a string; flags such as --lr 1e-5 produce exactly that."""
    assert load_recipe("mnist-mlp", [override]).student.train.optimizer.lr == value


def test_largest_values_in_range_are_accepted():
    r = load_recipe("mnist-mlp", ["seed=4294967295", "student.train.batch_size=2147483647", "student.train.optimizer.momentum=0.99"])
    assert (r.seed, r.student.train.batch_size) == (2**32 - 1, 2**31 - 1)


def test_seed_bounds_are_what_the_seeded_libraries_accept():
    """The documented seed range is exactly what numpy, Optuna and torch take (with the role offsets)."""
    import numpy as np
    import optuna
    import torch

    from kdlab.config import MAX_SEED

    np.random.RandomState(MAX_SEED)
    optuna.samplers.TPESampler(seed=MAX_SEED)
    torch.manual_seed(MAX_SEED + 101)  # pipeline seeds the dropout stream at seed + 100 + role offset
    with pytest.raises(ValueError):
        np.random.RandomState(MAX_SEED + 1)
    with pytest.raises(ValueError):
        optuna.samplers.TPESampler(seed=-1)


def test_override_values_are_parsed_strictly_and_echoed_short():
    with pytest.raises(ConfigError, match=r"override 'teacher.model={hidden: \[1\], hidden: \[2\]}': key 'hidden' appears twice"):
        load_recipe("mnist-mlp", ["teacher.model={hidden: [1], hidden: [2]}"])
    with pytest.raises(ConfigError, match=r"^override 'seed=9+\.\.\.9+': a number has more than \d+ digits") as exc:
        load_recipe("mnist-mlp", ["seed=" + "9" * 5000])
    assert len(str(exc.value)) < 200


def test_overrides_take_precedence_and_parse_yaml_values():
    r = load_recipe("mnist-mlp", ["student.train.epochs=3", "distill.temperature=4", "teacher.model.hidden=[10, 10]"])
    assert r.student.train.epochs == 3 and r.distill.temperature == 4.0
    assert r.teacher.model.params["hidden"] == [10, 10]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["seed"])


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"recipe .*bad.yaml is empty; start from a bundled one"),
        (b"# only a comment\n", r"is empty"),
        (b"- 1\n- 2\n", r"top level must be a mapping of keys, got list"),
        (b"hello\n", r"top level must be a mapping of keys, got str"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"is not a UTF-8 text file"),
        (b"teacher: [1, 2]\n", r"teacher: expected a mapping of keys, got \[1, 2\]"),
        (b"teacher:\n  model: mlp\n", r"teacher.model: expected a mapping of keys, got 'mlp'; write teacher.model.name: mlp"),
        (b"distill:\n  temperature: .nan\n", r"distill.temperature: must be a finite number > 0, got nan"),
        (b"seed: 1e30\n", r"seed: expected int, got '1e30'"),
        (b"seed: 1\nseed: 2\n", r"recipe .*bad.yaml: key 'seed' appears twice \(lines 1 and 2\); keep one"),
        (b"teacher:\n  train:\n    epochs: 1\nteacher:\n  model:\n    dropout: 0.1\n", r"key 'teacher' appears twice \(lines 1 and 4\)"),
        (b"seed: " + b"9" * 5000 + b"\n", r"recipe .*bad.yaml: a number has more than \d+ digits"),
        (b"seed: " + b"9" * 4000 + b"\n", r"seed: must be an integer in \[0, 4294967295\] .*, got 9{10,}\.\.\.9+$"),
        (b"? [1]\n: 2\n", r"invalid YAML at line 1 \(found unhashable key\)"),
        (b"dataset:\n  val_fraction: [" + b"0, " * 100 + b"0]\n", r"dataset.val_fraction: expected float, got \[0, 0, 0, 0, 0, 0, \.\.\.\]$"),
    ],
)
def test_bad_recipe_files(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_recipe(str(bad))


def test_recipe_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe .* is a folder; give a YAML file"):
        load_recipe(str(tmp_path))


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


def test_a_section_of_a_method_not_in_use_is_range_checked_too():
    """compare --methods uses every section, so a NaN there is refused when the recipe loads."""
    import pytest

    from kdlab import ConfigError
    from kdlab.recipes import load_recipe

    for bad, match in (("distill.self-ema.decay=.nan", "distill.self-ema.decay: must be a number in"),
                       ("distill.rkd.angle_weight=-1", "distill.rkd.angle_weight: must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=match):
            load_recipe("digits-mlp", [bad])  # distill.method stays hinton


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_one_temperature_rule_for_the_recipe_the_loss_and_the_method(T):
    """distill.temperature's rule is attached to its field and used by every check of a temperature."""
    import torch

    from kdlab import kd_loss
    from kdlab.config import DistillConfig, rule_of
    from kdlab.methods import KD

    assert not rule_of(DistillConfig, "temperature").holds(T)
    with pytest.raises(ConfigError, match="distill.temperature: must be a finite number > 0"):
        load_recipe("digits-mlp", [f"distill.temperature={T}"])
    with pytest.raises(ConfigError, match="T must be > 0"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), T)
    with pytest.raises(ConfigError, match="temperature"):
        KD("hinton", T)
    assert rule_of(DistillConfig, "temperature").holds(0.5)
