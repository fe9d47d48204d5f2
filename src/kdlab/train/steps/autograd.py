"""The general step: ``total = Σ weight · term`` through autograd, with precision, accumulation and clipping."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...data.loaders import loader_batches
from ...methods.base import Batch, Distiller
from ..precision import Precision
from ..processes import OneProcess
from ..sources import TeacherSource

Augment = Callable[[Tensor, Tensor, torch.Generator], "tuple[Tensor, Tensor]"]


class AutogradStep:
    """One optimizer step per ``accumulate`` batches of the method's weighted terms through autograd.

    Batches are the stored training tensors by index (``data``, ``indexer``) or a user's
    ``DataLoader`` (``loader``); ``augment(x, y, generator)`` transforms each one first.
    Accumulation weighs each micro-batch's mean loss by its share of the nominal
    ``batch_size × accumulate`` samples; a short last group is rescaled to the mean over its samples.
    """

    kind = "autograd"

    def __init__(self, *, students: Any, method: Distiller, source: TeacherSource, precision: Precision,
                 processes: OneProcess, optimizer: torch.optim.Optimizer, params: List[nn.Parameter],
                 clip: Optional[float], accumulate: int, batch_size: int, indexer: Any = None, train: Any = None,
                 loader: Any = None, device: Optional[torch.device] = None, augment: Optional[Augment] = None,
                 augment_rng: Optional[torch.Generator] = None, replay: Any = None) -> None:
        self.students, self.method, self.source, self.precision, self.processes = students, method, source, precision, processes
        self.optimizer, self.params, self.clip = optimizer, params, clip
        self.accumulate, self.nominal = accumulate, batch_size * accumulate
        self.indexer, self.train, self.loader, self.device = indexer, train, loader, device
        self.augment, self.augment_rng = augment, augment_rng
        self.replay = replay  # kdlab.data.views.ReplayViews: each batch is its samples' stored views
        self.micro = self.seen = 0
        self.number = 0

    def epoch(self, number: int = 0) -> Tuple[Iterable[Tuple[Tensor, ...]], Optional[int]]:
        """Epoch ``number``'s (x, y, sample indices[, views]) and how many there are (None: a loader without a length)."""
        self.students.model.train()
        self.micro = self.seen = 0
        self.number = number
        if self.loader is not None:
            try:
                total: Optional[int] = len(self.loader)
            except TypeError:  # an iterable-style dataset
                total = None
            return loader_batches(self.loader, self.device), total
        return self._indexed(), len(self.indexer)

    def _indexed(self) -> Iterator[Tuple[Tensor, ...]]:
        X, Y, replay = self.train.x, self.train.y, self.replay
        for idx in self.indexer.epoch():
            idx = idx.to(X.device)
            if replay is not None:
                view = replay.view_of(self.number, idx)
                yield (*replay(X, Y, idx, view), idx, view)
            else:
                yield X.index_select(0, idx), Y.index_select(0, idx), idx

    def __call__(self, item: Tuple[Tensor, ...]) -> Tensor:
        xb, yb, idx = item[:3]
        view = item[3] if len(item) > 3 else None
        if self.augment is not None:
            xb, yb = self.augment(xb, yb, self.augment_rng)  # type: ignore[arg-type]
        precision, method = self.precision, self.method
        xb = precision.inputs(xb)
        batch = Batch(xb, yb, idx, view)
        with precision.autocast():
            student, teacher = self.students.outputs(xb), self.source.outputs(batch)
        student, teacher = precision.fp32(student), precision.fp32(teacher)
        terms = method(batch, student, teacher)  # type: ignore[arg-type]
        total = method.total(terms)
        if self.micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        acc = self.accumulate
        precision.backward(total if acc == 1 else total * (len(yb) / self.nominal))
        self.micro, self.seen = self.micro + 1, self.seen + len(yb)
        if self.micro == acc:
            self._optimizer_step(1.0 if acc == 1 else self.seen / self.nominal)
            self.micro = self.seen = 0
        return method.term_values(terms, total)

    def finish(self) -> None:
        """A short last accumulation group: its gradient is rescaled to the mean over its samples."""
        if self.micro:
            self._optimizer_step(self.seen / self.nominal)
            self.micro = self.seen = 0

    def _optimizer_step(self, fraction: float) -> None:
        """Gradients summed over processes (still scaled: the same scale everywhere), unscaled (fp16),
        a short accumulation group rescaled by ``1/fraction``, clipped, then the step."""
        fraction = self.processes.sync(self.params, self.indexer, self.accumulate, fraction)
        self.precision.unscale(self.optimizer)
        if fraction != 1.0:
            for p in self.params:  # once per short group: a plain loop, no private foreach API
                if p.grad is not None:
                    p.grad.div_(fraction)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.precision.step(self.optimizer)
