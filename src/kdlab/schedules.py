"""Per-epoch schedules for the loss weights and the temperature.

A schedule is a pure function of (configured values, epoch index e = 0..E−1, E) so it is easy to
test and to record: the run's weight plan (:class:`kdlab.train.weights.WeightPlan`) applies it
before every epoch and the trainer logs the values in force in every epoch's metrics. Weight schedules shift weight from the hard to the soft term while
keeping ``hard_weight + soft_weight`` fixed, so only the balance changes, not the overall scale.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

from .config import DistillConfig
from .registry import Registry

WeightSchedule = Callable[[DistillConfig, int, int], Tuple[float, float]]
TemperatureSchedule = Callable[[DistillConfig, int, int], float]

WEIGHT_SCHEDULES: Registry[WeightSchedule] = Registry("weight schedule")
TEMPERATURE_SCHEDULES: Registry[TemperatureSchedule] = Registry("temperature schedule")


@WEIGHT_SCHEDULES.register("constant")
def constant_weights(cfg: DistillConfig, epoch: int, epochs: int) -> Tuple[float, float]:
    return cfg.hard_weight, cfg.soft_weight


@WEIGHT_SCHEDULES.register("cosine")
def cosine_weights(cfg: DistillConfig, epoch: int, epochs: int) -> Tuple[float, float]:
    """hard = S·0.5·(1 + cos(π·e/E)), soft = S − hard, S = hard_weight + soft_weight.

    Starts on the labels (hard = S) and hands over to the teacher; with S = 1 this is the usual
    ``hard = 0.5·(1 + cos(π·epoch/epochs))``.
    """
    total = cfg.hard_weight + cfg.soft_weight
    hard = total * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return hard, total - hard


@WEIGHT_SCHEDULES.register("exp")
def exp_weights(cfg: DistillConfig, epoch: int, epochs: int) -> Tuple[float, float]:
    """hard = hard_weight·exp(−rate·e), soft = S − hard: the label term decays exponentially."""
    total = cfg.hard_weight + cfg.soft_weight
    hard = cfg.hard_weight * math.exp(-cfg.weight_schedule.rate * epoch)
    return hard, total - hard


@TEMPERATURE_SCHEDULES.register("constant")
def constant_temperature(cfg: DistillConfig, epoch: int, epochs: int) -> float:
    return cfg.temperature


@TEMPERATURE_SCHEDULES.register("linear")
def linear_temperature(cfg: DistillConfig, epoch: int, epochs: int) -> float:
    """T = max(min, T0 − step·e): soft targets early, sharper ones late."""
    s = cfg.temperature_schedule
    return max(s.min, cfg.temperature - s.step * epoch)


def scheduled_values(cfg: DistillConfig, epoch: int, epochs: int) -> Tuple[float, float, float]:
    """(temperature, hard_weight, soft_weight) for 0-based ``epoch`` of ``epochs``."""
    hard, soft = WEIGHT_SCHEDULES.get(cfg.weight_schedule.name)(cfg, epoch, epochs)
    T = TEMPERATURE_SCHEDULES.get(cfg.temperature_schedule.name)(cfg, epoch, epochs)
    return T, hard, soft
