"""The run's weight plan: configured weights × schedule × the method's own warm-up × stage, per epoch."""

import math

import pytest

from kdlab.config import DistillConfig, StageConfig, TemperatureScheduleConfig, WeightScheduleConfig
from kdlab.errors import ConfigError
from kdlab.methods import CE, KD
from kdlab.methods.dkd import DKD, DKDParams
from kdlab.methods.fitnets import FitNets, FitNetsParams
from kdlab.train.weights import EpochWeights, WeightPlan

COS = [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]  # hard, sum 1, E = 4


def _distill(**kw):
    """T 4 -> 3 -> 2 -> 1.5 (linear, step 1, min 1.5) and cosine hard/soft, unless overridden."""
    base = dict(temperature=4.0, hard_weight=0.3, soft_weight=0.7, weight_schedule=WeightScheduleConfig("cosine"),
                temperature_schedule=TemperatureScheduleConfig("linear", min=1.5, step=1.0))
    return DistillConfig(**{**base, **kw})


def _kd():
    return KD(coding="hinton", temperature=4.0, hard_weight=0.3, soft_weight=0.7)


def test_schedules_move_t_and_the_hard_soft_weights_by_hand():
    m, plan = _kd(), WeightPlan(4, _distill())
    for e in range(1, 5):
        assert plan.apply([m], e) is False  # no stages: never a reset
        w = m.weights()
        assert w["hard"] == pytest.approx(COS[e - 1], abs=1e-15) and w["soft"] == pytest.approx(1 - COS[e - 1], abs=1e-15)
        assert m.temperature == [4.0, 3.0, 2.0, 1.5][e - 1]
        assert m.epoch_info() == {"temperature": m.temperature, "hard_weight": w["hard"], "soft_weight": w["soft"]}
        assert (m.epoch_weights.stage, m.epoch_weights.stage_name) == (None, None)
    assert (m.hard_weight, m.soft_weight, m.base_temperature) == (0.3, 0.7, 4.0)  # the configured values are untouched


def test_stages_replace_the_weights_record_the_stage_and_reset_at_their_first_epoch():
    stages = [StageConfig(name="labels", epochs=2, terms={"hard": 1.0}), StageConfig(name="kd", reset_optimizer=True)]
    m, plan = _kd(), WeightPlan(4, _distill(), stages)
    resets = []
    for e in range(1, 5):
        resets.append(plan.apply([m], e))
        w = m.epoch_weights
        if e <= 2:  # the stage's terms in force, unlisted ones 0; the schedule still moves T and the method's own values
            assert m.weights() == {"hard": 1.0, "soft": 0.0} and (w.stage, w.stage_name, w.stage_terms) == (1, "labels", True)
            assert m.weight_setting("hard") == "distill.stages[0].terms.hard (kdlab.distill: stages=)"
        else:  # a stage without terms: the scheduled weights
            assert m.weights() == {"hard": pytest.approx(COS[e - 1]), "soft": pytest.approx(1 - COS[e - 1])}
            assert (w.stage, w.stage_name, w.stage_terms) == (2, "kd", False)
            assert m.weight_setting("hard") == "distill.hard_weight (kdlab.distill: hard_weight=)"
        assert m.epoch_info()["hard_weight"] == pytest.approx(COS[e - 1]) and m.temperature == [4.0, 3.0, 2.0, 1.5][e - 1]
    assert resets == [False, False, True, False]
    # a first stage asking for a reset: nothing to reset at epoch 1
    assert WeightPlan(stages=[StageConfig(epochs=1, reset_optimizer=True), StageConfig()]).apply([m], 1) is False


def test_dkd_warmup_is_the_methods_own_factor_and_is_not_scheduled():
    m = DKD(params=DKDParams(alpha=2.0, beta=8.0, warmup=4), temperature=4.0, hard_weight=1.0)
    plan = WeightPlan(6, _distill())  # cosine and linear T: DKD declares neither
    got = []
    for e in range(1, 7):
        plan.apply([m], e)
        got.append((m.weights(), m.temperature, m.epoch_info()["warmup_factor"]))
    assert got[0] == ({"hard": 1.0, "tckd": 0.5, "nckd": 2.0}, 4.0, 0.25)
    assert got[1] == ({"hard": 1.0, "tckd": 1.0, "nckd": 4.0}, 4.0, 0.5)
    assert got[2] == ({"hard": 1.0, "tckd": 1.5, "nckd": 6.0}, 4.0, 0.75)
    assert got[3] == got[4] == got[5] == ({"hard": 1.0, "tckd": 2.0, "nckd": 8.0}, 4.0, 1.0)
    plan.apply([m], 3)
    assert m.epoch_info() == {"temperature": 4.0, "hard_weight": 1.0, "tckd_weight": 1.5, "nckd_weight": 6.0, "warmup_factor": 0.75}


def test_a_stage_with_terms_replaces_dkds_warmed_weights_which_it_still_records():
    m = DKD(params=DKDParams(alpha=2.0, beta=8.0, warmup=4), temperature=4.0, hard_weight=1.0)
    plan = WeightPlan(stages=[StageConfig(epochs=2, terms={"tckd": 1.0, "nckd": 1.0}), StageConfig()])
    plan.apply([m], 1)
    assert m.weights() == {"hard": 0.0, "tckd": 1.0, "nckd": 1.0}
    assert (m.epoch_info()["tckd_weight"], m.epoch_info()["warmup_factor"]) == (0.5, 0.25)
    plan.apply([m], 3)
    assert m.weights() == {"hard": 1.0, "tckd": 1.5, "nckd": 6.0} and m.epoch_weights.stage == 2


def test_fitnets_hint_epochs_weigh_hard_and_soft_zero_then_the_schedule_applies():
    m = FitNets(params=FitNetsParams({"a": "b"}, weight=10.0, hint_epochs=2), temperature=4.0, hard_weight=0.3, soft_weight=0.7)
    plan = WeightPlan(4, _distill())
    info = []
    for e in range(1, 5):
        plan.apply([m], e)
        info.append((m.weights(), m.epoch_info()["stage"], m.temperature))
    assert info[0] == ({"hard": 0.0, "soft": 0.0, "hint": 10.0}, 1, 4.0)
    assert info[1] == ({"hard": 0.0, "soft": 0.0, "hint": 10.0}, 1, 3.0)
    assert info[2] == ({"hard": 0.5, "soft": 0.5, "hint": 10.0}, 2, 2.0)
    assert info[3][0] == {"hard": pytest.approx(COS[3]), "soft": pytest.approx(1 - COS[3]), "hint": 10.0} and info[3][1:] == (2, 1.5)
    assert m.epoch_weights.factors == {"hard": 1.0, "soft": 1.0, "hint": 1.0}
    plan.apply([m], 1)
    assert m.epoch_weights.factors == {"hard": 0.0, "soft": 0.0, "hint": 1.0}


def test_the_plan_is_a_pure_function_of_the_epoch_so_a_resume_at_a_stage_boundary_matches():
    stages = [StageConfig(epochs=3, terms={"hint": 1.0}), StageConfig(terms={"hard": 0.5, "soft": 0.5, "hint": 1.0}, reset_optimizer=True)]

    def method():
        return FitNets(params=FitNetsParams({"a": "b"}, hint_epochs=2), temperature=4.0, hard_weight=0.3, soft_weight=0.7)

    whole, m = WeightPlan(6, _distill(), stages), method()
    uninterrupted = {}
    for e in range(1, 7):
        reset = whole.apply([m], e)
        uninterrupted[e] = (reset, m.epoch_weights, m.epoch_info())
    resumed, r = WeightPlan(6, _distill(), stages), method()  # a new process resuming after epoch 3
    for e in range(4, 7):
        reset = resumed.apply([r], e)
        assert (reset, r.epoch_weights, r.epoch_info()) == uninterrupted[e]
    assert [uninterrupted[e][0] for e in range(1, 7)] == [False, False, False, True, False, False]
    assert resumed.apply([r], 2) is False and r.epoch_weights == uninterrupted[2][1]  # any order, any repetition
    assert isinstance(r.epoch_weights, EpochWeights)


def test_release_hands_the_method_back_as_configured_and_no_plan_means_configured():
    m = _kd()
    assert m.epoch_weights is None and m.weights() == m.term_weights() and m.temperature == 4.0
    plan = WeightPlan(4, _distill())
    plan.apply([m], 4)
    assert m.temperature == 1.5
    plan.release([m])
    assert m.epoch_weights is None and m.weights() == {"hard": 0.3, "soft": 0.7} and m.temperature == 4.0


def test_a_constant_plan_keeps_the_configured_values_and_leaves_ce_alone():
    m, ce = _kd(), CE()
    WeightPlan.constant().apply([m, ce], 7)  # no epoch count needed without schedules
    assert m.weights() == {"hard": 0.3, "soft": 0.7} and m.temperature == 4.0
    assert ce.weights() == {"hard": 1.0} and ce.epoch_weights.temperature is None and ce.epoch_info() == {}
    WeightPlan(4, _distill()).apply([ce], 2)  # CE declares no schedule
    assert ce.weights() == {"hard": 1.0}
    with pytest.raises(ValueError, match="epoch count"):
        WeightPlan(None, _distill())


def test_the_schedule_starts_from_the_methods_configured_values_without_compounding():
    m = KD(coding="hinton", temperature=4.0, hard_weight=0.8, soft_weight=0.4)
    plan = WeightPlan(5, _distill(hard_weight=0.8, soft_weight=0.4, weight_schedule=WeightScheduleConfig("exp", rate=0.5)))
    for _ in range(3):
        plan.apply([m], 3)
        assert m.weights() == {"hard": pytest.approx(0.8 * math.exp(-1.0)), "soft": pytest.approx(1.2 - 0.8 * math.exp(-1.0))}
        assert m.temperature == 2.0


def test_a_stage_naming_a_term_the_method_lacks_is_refused():
    with pytest.raises(ConfigError, match="hint not a term of this method; its terms are hard, soft"):
        WeightPlan(stages=[StageConfig(epochs=1, terms={"hint": 1.0}), StageConfig()]).apply([_kd()], 2)
