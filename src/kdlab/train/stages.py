"""Progressive (staged) training: which of a recipe's ``distill.stages`` is in force, and its check.

Each stage trains a chosen set of the method's weighted loss terms for a number of epochs — e.g.
FitNets' hint alone for 5 epochs, then hard + soft + hint — optionally starting with fresh
optimizer state. The stage in force follows from the epoch number alone, so a resumed run is in
the same stage as the uninterrupted one; a reset happens at the first epoch of its stage, also
when a resume starts exactly there. Any method works: the run's weight plan
(:class:`kdlab.train.weights.WeightPlan`) hands each method its stage's weights, which
:meth:`Distiller.weights` (and so the autograd total and the closed-form fast path) return instead
of the configured ones.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

from ..config import StageConfig
from ..errors import ConfigError


def stage_at(stages: Sequence[StageConfig], epoch: int) -> Tuple[int, int]:
    """(0-based stage index, the stage's first epoch) for 1-based ``epoch``; the last stage runs to the end."""
    start = 1
    for i, st in enumerate(stages):
        if i == len(stages) - 1 or st.epochs is None or epoch < start + st.epochs:
            return i, start
        start += st.epochs
    raise ValueError("no stages")  # pragma: no cover - callers pass a non-empty list


def check_stages(stages: Sequence[StageConfig], method: Any) -> None:
    """Every term a stage weighs is one the method returns (one line listing them otherwise)."""
    known = list(method.term_weights())
    for i, st in enumerate(stages):
        unknown = [t for t in st.terms if t not in known]
        if unknown:
            raise ConfigError(f"distill.stages[{i}].terms: {', '.join(unknown)} not a term of this method; "
                              f"its terms are {', '.join(known)}")
