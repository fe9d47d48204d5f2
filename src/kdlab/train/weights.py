"""One weight plan per run: the loss weights and temperature every method trains with, epoch by epoch.

For 1-based epoch ``e`` and each method the plan computes, in this order:

1. base: the method's configured weights (:meth:`~kdlab.methods.base.Distiller.term_weights`) and T
   (:meth:`~kdlab.methods.base.Distiller.configured_temperature`);
2. schedule: ``distill.weight_schedule`` moves the ``hard``/``soft`` terms (their sum kept) and
   ``distill.temperature_schedule`` moves T (:mod:`kdlab.schedules`), for a method that declares them
   in :attr:`~kdlab.methods.base.Distiller.schedules`;
3. the method's own warm-up: each term × :meth:`~kdlab.methods.base.Distiller.warmup_factors` (DKD's
   ``min(e / warmup, 1)`` on TCKD and NCKD, FitNets' hint-only epochs weigh hard and soft 0);
4. stage: the stage in force (``distill.stages``), when it lists terms, replaces the weights (terms it
   does not list weigh 0); its index and name are recorded.

The result (:class:`~kdlab.methods.base.EpochWeights`) is handed to the method
(:meth:`~kdlab.methods.base.Distiller.use_weights`): methods never change their own weights, and
the loop applies the plan before every epoch. Everything follows from the epoch number alone, so a
run resumed at any epoch trains with the uninterrupted run's weights, and the optimizer reset of a
stage with ``reset_optimizer`` happens at its first epoch also when a resume starts exactly there.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Optional, Sequence

from ..config import DistillConfig, StageConfig
from ..methods.base import TEMPERATURE_SCHEDULE, WEIGHT_SCHEDULE, Distiller, EpochWeights
from ..schedules import TEMPERATURE_SCHEDULES, WEIGHT_SCHEDULES
from .stages import check_stages, stage_at

__all__ = ["WeightPlan", "EpochWeights"]


class WeightPlan:
    """The run's weights per epoch (see the module docstring).

    ``distill``: the recipe's distill settings, whose schedules move T and the hard/soft weights (None:
    no schedule); ``stages``: ``distill.stages`` (empty: no stages); ``epochs``: the run's epoch count,
    which the schedules need. ``WeightPlan()`` (or :meth:`constant`) still applies each method's warm-up.
    """

    def __init__(self, epochs: Optional[int] = None, distill: Optional[DistillConfig] = None,
                 stages: Sequence[StageConfig] = ()) -> None:
        self.epochs, self.distill, self.stages = epochs, distill, list(stages)
        scheduled = distill is not None and (distill.weight_schedule.name != "constant"
                                             or distill.temperature_schedule.name != "constant")
        if scheduled and not epochs:
            raise ValueError("a weight plan with schedules needs the run's epoch count")

    @classmethod
    def constant(cls) -> "WeightPlan":
        """No schedule and no stage: each method's configured weights and its own warm-up."""
        return cls()

    def stage_index(self, epoch: int) -> Optional[int]:
        """0-based index of the stage in force at 1-based ``epoch``; None without stages."""
        return stage_at(self.stages, epoch)[0] if self.stages else None

    def resets_optimizer(self, epoch: int) -> bool:
        """True when a stage with ``reset_optimizer`` (not the first) starts at 1-based ``epoch``."""
        if not self.stages:
            return False
        index, first = stage_at(self.stages, epoch)
        return bool(self.stages[index].reset_optimizer) and epoch == first and index > 0

    def weights_for(self, method: Distiller, epoch: int) -> EpochWeights:
        """What ``method`` trains with at 1-based ``epoch``: a pure function of the two."""
        base = method.term_weights()
        weights: Dict[str, float] = dict(base)
        T = method.configured_temperature()
        d, moved = self.distill, method.schedules
        if d is not None and (WEIGHT_SCHEDULE in moved or (TEMPERATURE_SCHEDULE in moved and T is not None)):
            # the schedules are functions of the distill settings: the method's own values stand in for them
            cfg = dataclasses.replace(d, **({"hard_weight": base["hard"], "soft_weight": base["soft"]} if WEIGHT_SCHEDULE in moved else {}),
                                      **({"temperature": T} if T is not None else {}))
            if WEIGHT_SCHEDULE in moved:
                weights["hard"], weights["soft"] = WEIGHT_SCHEDULES.get(d.weight_schedule.name)(cfg, epoch - 1, self.epochs or 0)
            if TEMPERATURE_SCHEDULE in moved and T is not None:
                T = TEMPERATURE_SCHEDULES.get(d.temperature_schedule.name)(cfg, epoch - 1, self.epochs or 0)
        own = method.warmup_factors(epoch)
        factors = {name: float(own.get(name, 1.0)) for name in weights}
        for name, f in own.items():
            weights[name] = weights[name] * f
        in_force, stage, stage_name, stage_terms = dict(weights), None, None, False
        index = self.stage_index(epoch)
        if index is not None:
            check_stages(self.stages, method)  # a stage naming a term the method lacks: refused (a few dict look-ups)
            st = self.stages[index]
            stage, stage_name = index + 1, st.name
            if st.terms:
                in_force = {name: float(st.terms.get(name, 0.0)) for name in weights}
                stage_terms = True
        return EpochWeights(epoch=epoch, weights=in_force, method_weights=weights, factors=factors, temperature=T,
                            stage=stage, stage_name=stage_name, stage_terms=stage_terms)

    def apply(self, methods: Iterable[Distiller], epoch: int) -> bool:
        """Hand every method its weights for 1-based ``epoch``; True when the loop must now clear the
        optimizer state (a stage with ``reset_optimizer`` starts here)."""
        for method in methods:
            method.use_weights(self.weights_for(method, epoch))
        return self.resets_optimizer(epoch)

    def release(self, methods: Iterable[Distiller]) -> None:
        """After the run: each method back to its configured weights (it is handed back as configured)."""
        for method in methods:
            method.use_weights(None)
