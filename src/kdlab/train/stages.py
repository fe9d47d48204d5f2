"""Progressive (staged) training: a recipe's ``distill.stages`` as a trainer callback.

Each stage trains a chosen set of the method's weighted loss terms for a number of epochs — e.g.
FitNets' hint alone for 5 epochs, then hard + soft + hint — optionally starting with fresh
optimizer state. The stage in force follows from the epoch number alone, so a resumed run is in
the same stage as the uninterrupted one; a reset happens at the first epoch of its stage, also
when a resume starts exactly there. Any method works: stages only set
:attr:`~kdlab.methods.base.Distiller.stage_weights`, which :meth:`Distiller.weights` (and so the
autograd total and the closed-form fast path) use instead of the configured weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..config import StageConfig
from ..errors import ConfigError
from .callbacks import Callback

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


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


class StageCallback(Callback):
    """Sets each method's stage weights before every epoch and resets the optimizer where asked."""

    def __init__(self, stages: Sequence[StageConfig]) -> None:
        if not stages:
            raise ValueError("StageCallback needs at least one stage")
        self.stages: List[StageConfig] = list(stages)

    def on_fit_start(self, trainer: "Trainer") -> None:
        for method in trainer.methods:
            check_stages(self.stages, method)

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        index, first = stage_at(self.stages, epoch)
        st = self.stages[index]
        weights: Optional[Dict[str, float]] = {k: float(v) for k, v in st.terms.items()} if st.terms else None
        for method in trainer.methods:
            method.stage = index + 1
            method.stage_name = st.name
            method.stage_weights = weights
        if st.reset_optimizer and epoch == first and index > 0:
            trainer.optimizer.state.clear()

    def on_fit_end(self, trainer: "Trainer") -> None:
        for method in trainer.methods:  # a method handed back is as configured
            method.stage, method.stage_name, method.stage_weights = None, None, None
