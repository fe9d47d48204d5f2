"""Logit methods: Hinton KD with any registered soft-loss coding, and plain cross-entropy.

    KD:  total = hard_weight · CE(s, y) + soft_weight · coding(s, t, T)
    CE:  total = CE(s, y)                       (teachers, scratch students)

Both offer the closed-form fast path (:mod:`kdlab.losses.closed_form`) when the coding declares
one: the per-sample teacher/label constants are tabulated once per epoch from cached teacher
logits and each step costs one ``logits.backward(grad)`` instead of a loss graph.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import Tensor

from ..errors import ConfigError
from ..losses.closed_form import ClosedFormObjective, closed_form_of
from ..losses.objective import DistillationObjective, hard_loss
from ..losses.registry import SOFT_LOSSES
from .base import Batch, Distiller, Needs, Outputs
from .registry import register_method


class CE(Distiller):
    """Cross-entropy on the labels only: the teacher's own training and the scratch baseline."""

    weight_settings: Dict[str, str] = {}  # one term, weight 1: no setting

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        return {"hard": hard_loss(student.logits, batch.y)}

    def term_weights(self) -> Dict[str, float]:
        return {"hard": 1.0}

    def fast_path(self, labels: Tensor, num_classes: int, teacher_logits: Optional[Tensor]) -> Optional[ClosedFormObjective]:
        if labels.is_floating_point() or type(self).forward is not CE.forward:
            return None
        return ClosedFormObjective(labels, num_classes, distill=False)

    def epoch_info(self) -> Dict[str, float]:
        return {}


class KD(Distiller):
    """Hinton KD; ``temperature``/``hard_weight``/``soft_weight`` are plain attributes so a
    schedule can move them between epochs (the closed form re-tabulates on change).

    Where the defaults (``distill.temperature``/``hard_weight``/``soft_weight``) come from: T = 4 is
    RepDistiller's ``--kd_T 4`` and mdistiller's ``KD.TEMPERATURE 4`` (CIFAR-100); the weights
    0.5/0.5 are kdlab's choice (both references use CE 0.1 + KD 0.9: ``-r 0.1 -a 0.9``,
    ``KD.LOSS.CE_WEIGHT 0.1``/``KD_WEIGHT 0.9``). The soft term is T²·KL, as in Hinton et al.
    """

    needs = Needs(teacher_logits=True)

    def __init__(self, coding: str = "hinton", temperature: float = 4.0, hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if not (hard_weight >= 0 and soft_weight >= 0):
            raise ConfigError(f"loss weights must be >= 0, got hard_weight={hard_weight}, soft_weight={soft_weight}")
        self.soft_loss_name = coding
        self.soft_fn = SOFT_LOSSES.get(coding)
        self.temperature = float(temperature)
        self.hard_weight = float(hard_weight)
        self.soft_weight = float(soft_weight)

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
        """The closed form when it computes exactly this method: integer labels, a coding that
        declares its closed form, and no subclass overriding :meth:`forward` (say, to add a penalty)."""
        if labels.is_floating_point() or type(self).forward is not KD.forward or closed_form_of(self.soft_fn) is None:
            return None
        return ClosedFormObjective(labels, num_classes, teacher_logits)

    def epoch_info(self) -> Dict[str, float]:
        return {"temperature": self.temperature, "hard_weight": self.hard_weight, "soft_weight": self.soft_weight}


@register_method("ce")
def build_ce(params: None, distill: Any) -> CE:
    """cross-entropy on the labels only (teacher training, scratch students)"""
    return CE()


@register_method("hinton")
def build_kd(params: None, distill: Any) -> KD:
    """Hinton KD: hard_weight·CE + soft_weight·coding(s, t, T); the coding is distill.loss"""
    return KD(distill.loss, distill.temperature, distill.hard_weight, distill.soft_weight)


class ObjectiveMethod(Distiller):
    """A :class:`DistillationObjective` (or a user's subclass of it) seen as a method.

    Kept so scripts written against the objective API keep working; a stock objective becomes
    :class:`KD`/:class:`CE` (and keeps the closed form), a subclass runs through its own forward.
    """

    def __init__(self, objective: Any, distill: bool) -> None:
        super().__init__()
        self.objective = objective
        self.needs = Needs(teacher_logits=distill)

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        return dict(self.objective(student.logits, batch.y, None if teacher is None else teacher.logits))

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The objective's own total: a subclass may add terms (a penalty) the weights do not show."""
        return terms["total"]

    def term_weights(self) -> Dict[str, float]:
        o = self.objective
        return {"hard": o.hard_weight, "soft": o.soft_weight} if self.needs.teacher else {"hard": 1.0}

    def epoch_info(self) -> Dict[str, float]:
        o = self.objective
        return {"temperature": o.temperature, "hard_weight": o.hard_weight, "soft_weight": o.soft_weight} if self.needs.teacher else {}

    @property
    def temperature(self) -> float:  # schedules move the objective's values
        return self.objective.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.objective.temperature = value

    @property
    def hard_weight(self) -> float:
        return self.objective.hard_weight

    @hard_weight.setter
    def hard_weight(self, value: float) -> None:
        self.objective.hard_weight = value

    @property
    def soft_weight(self) -> float:
        return self.objective.soft_weight

    @soft_weight.setter
    def soft_weight(self, value: float) -> None:
        self.objective.soft_weight = value


def from_objective(objective: Any, distill: bool) -> Distiller:
    """The method equivalent to ``objective`` (see :class:`ObjectiveMethod`)."""
    if type(objective) is DistillationObjective:
        if not distill:
            return CE()
        return KD(objective.soft_loss_name, objective.temperature, objective.hard_weight, objective.soft_weight)
    return ObjectiveMethod(objective, distill)
