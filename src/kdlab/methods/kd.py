"""Logit methods: Hinton KD with any registered soft-loss coding, and plain cross-entropy.

    KD:  total = hard_weight · CE(s, y) + soft_weight · coding(s, t, T)
    CE:  total = CE(s, y)                       (teachers, scratch students)

Both offer the closed-form fast path (:mod:`kdlab.losses.closed_form`) when the coding declares
one: the per-sample teacher/label constants are tabulated once per epoch from cached teacher
logits and each step costs one ``logits.backward(grad)`` instead of a loss graph.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor

from ..config import DistillConfig, rule_of
from ..errors import ConfigError
from ..losses.closed_form import ClosedFormObjective, closed_form_of
from ..losses.kd import hard_loss
from ..losses.registry import SOFT_LOSSES
from .base import TEMPERATURE_SCHEDULE, WEIGHT_SCHEDULE, Batch, Distiller, Needs, Outputs
from .registry import register_method


class CE(Distiller):
    """Cross-entropy on the labels only: the teacher's own training and the scratch baseline."""

    weight_settings: Dict[str, str] = {}  # one term, weight 1: no setting

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        return {"hard": hard_loss(student.logits, batch.y)}

    def term_weights(self) -> Dict[str, float]:
        return {"hard": 1.0}

    def fast_path(self, labels: Tensor, num_classes: int, teacher_logits: Optional[Tensor]) -> Optional[ClosedFormObjective]:
        if labels.is_floating_point():
            return None
        return ClosedFormObjective(labels, num_classes, distill=False)

    def epoch_info(self) -> Dict[str, float]:
        return {}


class KD(Distiller):
    """Hinton KD; ``hard_weight``/``soft_weight`` and ``base_temperature`` are the configured values,
    which the run's schedules move each epoch through its weight plan (:meth:`weights` and
    :attr:`temperature` give the values in force; the closed form re-tabulates on change).

    Where the defaults (``distill.temperature``/``hard_weight``/``soft_weight``) come from: T = 4 is
    RepDistiller's ``--kd_T 4`` and mdistiller's ``KD.TEMPERATURE 4`` (CIFAR-100); the weights
    0.5/0.5 are kdlab's choice (both references use CE 0.1 + KD 0.9: ``-r 0.1 -a 0.9``,
    ``KD.LOSS.CE_WEIGHT 0.1``/``KD_WEIGHT 0.9``). The soft term is T²·KL, as in Hinton et al.
    """

    needs = Needs(teacher_logits=True)
    schedules = frozenset({WEIGHT_SCHEDULE, TEMPERATURE_SCHEDULE})

    def __init__(self, coding: str = "hinton", temperature: float = 4.0, hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__()
        rule_of(DistillConfig, "temperature").check_argument(temperature, "temperature")
        for name, value in (("hard_weight", hard_weight), ("soft_weight", soft_weight)):
            rule_of(DistillConfig, name).check_argument(value, f"loss weights ({name})")
        self.soft_loss_name = coding
        self.soft_fn = SOFT_LOSSES.get(coding)
        self.base_temperature = float(temperature)
        self.hard_weight = float(hard_weight)
        self.soft_weight = float(soft_weight)

    @property
    def temperature(self) -> float:
        """The T in force this epoch (the weight plan's; before any plan, the configured one)."""
        return self.current_temperature()  # type: ignore[return-value]

    @temperature.setter
    def temperature(self, value: float) -> None:  # sets the configured T (a user's before_epoch hook)
        self.base_temperature = float(value)

    def configured_temperature(self) -> Optional[float]:
        return self.base_temperature

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        if teacher is None:
            raise ConfigError("the KD method needs a teacher; give --teacher or let kdlab train one")
        return {
            "hard": hard_loss(student.logits, batch.y),
            "soft": self.soft_fn(student.logits, teacher.logits, self.temperature),
        }

    def term_weights(self) -> Dict[str, float]:
        return {"hard": self.hard_weight, "soft": self.soft_weight}

    def fast_path(self, labels: Tensor, num_classes: int, teacher_logits: Optional[Tensor]) -> Optional[ClosedFormObjective]:
        """The closed form of hard + soft for integer labels and a coding that declares one. The step
        planner checks it against :meth:`forward` on a probe, so a subclass adding a term trains through autograd."""
        if labels.is_floating_point() or closed_form_of(self.soft_fn) is None:
            return None
        return ClosedFormObjective(labels, num_classes, teacher_logits)

    def epoch_info(self) -> Dict[str, float]:
        w = self.method_weights()
        return {"temperature": self.temperature, "hard_weight": w["hard"], "soft_weight": w["soft"]}


@register_method("ce")
def build_ce(params: None, distill: Any) -> CE:
    """cross-entropy on the labels only (teacher training, scratch students)"""
    return CE()


@register_method("hinton")
def build_kd(params: None, distill: Any) -> KD:
    """Hinton KD: hard_weight·CE + soft_weight·coding(s, t, T); the coding is distill.loss"""
    return KD(coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
              soft_weight=distill.soft_weight)
