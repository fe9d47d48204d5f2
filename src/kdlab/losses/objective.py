"""The distillation objective: hard-label CE and a soft term, with two explicitly named weights.

    total = hard_weight · CE(s, y) + soft_weight · soft_loss(s, t, T)

For ``hinton`` the soft term already carries the T² factor. There is deliberately no ``alpha``:
tutorials disagree on whether ``alpha`` weighs the soft or the hard term.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import SOFT_LOSSES


def hard_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Batch-mean cross-entropy, = ``F.cross_entropy(s, y)``; written with ``gather`` because
    ``nll_loss`` has no vmap batching rule (``kdlab compare`` vmaps objectives over students)."""
    if labels.is_floating_point():  # class probabilities (label smoothing, mixup)
        return F.cross_entropy(student_logits, labels)
    return -F.log_softmax(student_logits, 1).gather(1, labels.unsqueeze(1)).mean()


class DistillationObjective(nn.Module):
    """Returns a dict of named terms (``total``, ``hard`` and, when distilling, ``soft``).

    ``temperature``, ``hard_weight`` and ``soft_weight`` are plain attributes so a schedule can
    change them between epochs.
    """

    def __init__(
        self,
        soft_loss: str = "hinton",
        temperature: float = 4.0,
        hard_weight: float = 0.5,
        soft_weight: float = 0.5,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if hard_weight < 0 or soft_weight < 0:
            raise ConfigError(f"loss weights must be >= 0, got hard_weight={hard_weight}, soft_weight={soft_weight}")
        self.soft_loss_name = soft_loss
        self.soft_fn = SOFT_LOSSES.get(soft_loss)
        self.temperature = float(temperature)
        self.hard_weight = float(hard_weight)
        self.soft_weight = float(soft_weight)

    def forward(self, student_logits: Tensor, labels: Tensor, teacher_logits: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Plain autograd composition (vmappable, so ``kdlab compare`` can batch students). The
        trainer's hot path computes codings that declare a closed form without autograd instead
        (:mod:`kdlab.losses.closed_form`, tested equal to this)."""
        if teacher_logits is None:
            hard = hard_loss(student_logits, labels)
            return {"total": hard, "hard": hard}
        hard = hard_loss(student_logits, labels)
        soft = self.soft_fn(student_logits, teacher_logits, self.temperature)
        total = self.hard_weight * hard + self.soft_weight * soft
        return {"total": total, "hard": hard, "soft": soft}
