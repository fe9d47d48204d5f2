"""The closed-form step: one ``index_select`` of tabulated label/teacher rows and one ``logits.backward(grad)``.

A method whose terms depend on logits alone may offer its value and ∂/∂logits in closed form
(:meth:`~kdlab.methods.base.Distiller.fast_path`); the per-sample constants are tabulated once per
epoch from the cached teacher logits, so a step builds no loss graph. A Linear/ReLU chain student
skips the model's graph too (:class:`~kdlab.train.steps.chain.ChainStep`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...logits import logits_of
from ...methods.base import Distiller
from ..processes import OneProcess
from .chain import ChainStep


class ClosedFormStep:
    """One optimizer step per batch of indices, from the method's closed form ``fast``."""

    def __init__(self, *, students: Any, method: Distiller, fast: Any, train: Any, indexer: Any,
                 optimizer: torch.optim.Optimizer, params: List[nn.Parameter], clip: Optional[float],
                 processes: OneProcess, chain: Optional[ChainStep] = None,
                 inputs: Callable[[Tensor], Tensor] = lambda x: x) -> None:
        self.students, self.method, self.fast, self.X = students, method, fast, train.x
        self.inputs = inputs  # the run's memory format (Precision.inputs)
        self.indexer, self.optimizer, self.params, self.clip, self.processes = indexer, optimizer, params, clip, processes
        self.chain = chain
        self.kind = "autograd-free chain" if chain is not None else "closed form"
        self.n_values = 1 + len(method.term_weights())

    def epoch(self, number: int = 0) -> Tuple[Iterable[Tensor], int]:
        self.students.model.train()
        self.fast.prepare_for(self.method)  # re-tabulates when T or a weight moved
        return self.indexer.epoch(), len(self.indexer)

    def __call__(self, idx: Tensor) -> Tensor:
        fast, X = self.fast, self.X
        idx = idx.to(X.device)
        if self.chain is not None:
            values = self.chain.step(X.index_select(0, idx), lambda logits: fast(logits, fast.rows(idx)))
        else:
            logits = logits_of(self.students.model(self.inputs(X.index_select(0, idx))), "student")
            values, grad = fast(logits.detach(), fast.rows(idx))
            self.optimizer.zero_grad(set_to_none=True)
            logits.backward(grad)
        self.processes.sync(self.params, self.indexer)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return values.narrow(-1, 0, self.n_values)

    def finish(self) -> None:
        pass
