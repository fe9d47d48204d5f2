import math

import pytest

from kdlab import ConfigError
from kdlab.recipes import load_recipe
from kdlab.pipeline import prepare_data, run_distill, run_teacher
from kdlab.schedules import scheduled_values


def _cfg(*overrides):
    return load_recipe("digits-mlp", list(overrides)).distill


def test_constant_is_the_configured_values():
    cfg = _cfg()
    assert all(scheduled_values(cfg, e, 10) == (cfg.temperature, cfg.hard_weight, cfg.soft_weight) for e in range(10))


def test_cosine_follows_the_formula_and_keeps_the_sum():
    cfg = _cfg("distill.weight_schedule.name=cosine", "distill.hard_weight=0.3", "distill.soft_weight=0.7")
    for e in range(8):
        T, hard, soft = scheduled_values(cfg, e, 8)
        assert hard == pytest.approx(0.5 * (1 + math.cos(math.pi * e / 8)))  # S = 1 here
        assert hard + soft == pytest.approx(1.0)
    assert scheduled_values(cfg, 0, 8)[1:] == (1.0, 0.0)


def test_exp_decays_the_hard_weight():
    cfg = _cfg("distill.weight_schedule={name: exp, rate: 0.5}", "distill.hard_weight=0.8", "distill.soft_weight=0.4")
    for e in range(5):
        _, hard, soft = scheduled_values(cfg, e, 5)
        assert hard == pytest.approx(0.8 * math.exp(-0.5 * e))
        assert soft == pytest.approx(1.2 - hard)


def test_linear_temperature_decays_to_its_floor():
    cfg = _cfg("distill.temperature=5", "distill.temperature_schedule={name: linear, step: 1.5, min: 2}")
    assert [scheduled_values(cfg, e, 5)[0] for e in range(5)] == [5.0, 3.5, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "override, key",
    [
        ("distill.weight_schedule.name=sine", "distill.weight_schedule.name"),
        ("distill.temperature_schedule.name=log", "distill.temperature_schedule.name"),
        ("distill.temperature_schedule.min=0", "distill.temperature_schedule.min"),
        ("distill.weight_schedule.rate=-1", "distill.weight_schedule.rate"),
        ("distill.weight_schedule.speed=1", "distill.weight_schedule.speed"),
    ],
)
def test_bad_schedule_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_recipe("digits-mlp", [override])


def test_schedules_are_applied_and_recorded_by_the_trainer():
    recipe = load_recipe(
        "digits-mlp",
        ["teacher.model.hidden=[32]", "teacher.train.epochs=1", "student.train.epochs=4",
         "distill.weight_schedule.name=cosine", "distill.temperature=4",
         "distill.temperature_schedule={name: linear, step: 1, min: 1.5}"],
    )
    data = prepare_data(recipe)
    teacher = run_teacher(recipe, data, out=False, progress=False)
    hist = run_distill(recipe, teacher.model, data, out=False, progress=False).fit.history
    assert [h["temperature"] for h in hist] == [4.0, 3.0, 2.0, 1.5]
    for e, h in enumerate(hist):
        assert h["hard_weight"] == pytest.approx(0.5 * (1 + math.cos(math.pi * e / 4)))
        assert h["loss_total"] == pytest.approx(h["hard_weight"] * h["loss_hard"] + h["soft_weight"] * h["loss_soft"], rel=1e-5)
