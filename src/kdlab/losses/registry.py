"""Registry of soft (teacher-matching) loss codings.

Every entry is a pure function ``fn(student_logits, teacher_logits, T) -> scalar tensor`` so the
same objective, trainer and comparison code runs any coding; adding one is a single
``@SOFT_LOSSES.register("name")`` in its own file.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..registry import Registry

SoftLoss = Callable[[Tensor, Tensor, float], Tensor]

SOFT_LOSSES: Registry[SoftLoss] = Registry("loss")
