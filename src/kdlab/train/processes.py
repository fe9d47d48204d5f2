"""The process plugin of the epoch loop: one process, or data-parallel under torchrun.

The loop calls the same hooks in either case; :class:`OneProcess` does nothing in them, so no
trainer code branches on whether it runs alone. Under torchrun (:class:`DataParallel`, see
:mod:`kdlab.train.distributed` for the process group itself):

* **Data.** Every rank draws the same seeded permutation per epoch, cuts it into the same global
  batches and trains on a contiguous slice of each (:class:`ShardedIndexer`). A user's
  ``DataLoader`` is not re-sharded: give it a ``DistributedSampler`` (its ``set_epoch`` is called).
* **Gradients.** After each backward every trainable parameter's gradient is summed over ranks,
  each rank's weighted by its share of the global batch: exactly the one-process gradient of the
  whole batch for mean-over-samples losses, the last partial batch included.
* **Teacher logits.** Each rank computes a contiguous 1/N of the training set's and all gather the table.
* **Metrics.** Each step's loss rows are weighted the same way and summed once per epoch.
* **Weights.** Rank 0's parameters and buffers are broadcast when training starts.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import distributed


class OneProcess:
    """Training in this process alone."""

    world_size = 1
    kind = "one process"

    def is_main(self) -> bool:
        return True

    def check(self, method: Any, n_train: Optional[int], batch_size: int) -> None:
        """Refuse what this process layout cannot train (nothing, in one process)."""

    def indexer(self, indexer: Any) -> Any:
        return indexer

    def teacher_logits(self, teacher: Any, x: Tensor, batch_size: int, members: bool = False) -> Tensor:
        return teacher.logits_for(x, batch_size, members=members)

    def start(self, tensors: Sequence[Tensor]) -> None:
        """Before the first epoch: every replica from the same weights (nothing to do alone)."""

    def start_epoch(self, loader: Any, epoch: int) -> None:
        """Before each epoch: a DistributedSampler's epoch (nothing to do alone)."""

    def sync(self, params: Sequence[nn.Parameter], indexer: Any, accumulate: int = 1, fraction: float = 1.0) -> float:
        """The global batch's gradient in ``params``; returns the global accumulation ``fraction``."""
        return fraction

    def reduce_rows(self, rows: Tensor, indexer: Any) -> Tensor:
        return rows


class DataParallel(OneProcess):
    """Data-parallel training over the torchrun process group ``ctx`` (:class:`distributed.Context`)."""

    kind = "torchrun"

    def __init__(self, ctx: distributed.Context) -> None:
        self.ctx = ctx
        self.world_size = ctx.world_size

    def is_main(self) -> bool:
        return self.ctx.is_main()

    def check(self, method: Any, n_train: Optional[int], batch_size: int) -> None:
        self.ctx.check_method(method)
        if n_train is not None:
            self.ctx.check_batches(n_train, batch_size)

    def indexer(self, indexer: Any) -> Any:
        return ShardedIndexer(indexer, self.ctx.rank, self.ctx.world_size)

    def teacher_logits(self, teacher: Any, x: Tensor, batch_size: int, members: bool = False) -> Tensor:
        return self.ctx.teacher_logits(teacher, x, batch_size, members)

    def start(self, tensors: Sequence[Tensor]) -> None:
        self.ctx.broadcast_tensors([t.data for t in tensors if t.numel()])

    def start_epoch(self, loader: Any, epoch: int) -> None:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def sync(self, params: Sequence[nn.Parameter], indexer: Any, accumulate: int = 1, fraction: float = 1.0) -> float:
        """One batch per step: each rank's mean-loss gradient weighted by its share. With accumulation
        each micro-batch loss was already weighted by its local size over the global nominal batch, so
        the gradients are plainly summed, and so is a short last group's ``fraction``."""
        if accumulate == 1:
            weight = indexer.weight if isinstance(indexer, ShardedIndexer) else 1.0 / self.world_size
            self.ctx.sync_gradients(params, weight)
            return fraction
        return self.ctx.sync_gradients(params, 1.0, extra=fraction)

    def reduce_rows(self, rows: Tensor, indexer: Any) -> Tensor:
        return self.ctx.reduce_rows(rows, indexer.weights if isinstance(indexer, ShardedIndexer) else None)


class ShardedIndexer:
    """A :class:`~kdlab.data.BatchIndexer` whose every global batch is cut to this rank's slice.

    The global batches are those of one process (same generator, same permutation); rank r takes
    the r-th of ``world_size`` near-equal contiguous slices. ``weights`` holds, per step of the
    current epoch, this rank's share ``n_rank / n_global`` of its global batch.
    """

    def __init__(self, indexer: Any, rank: int, world_size: int) -> None:
        self.indexer, self.rank, self.world_size = indexer, rank, world_size
        self.weights: List[float] = []
        self.weight = 1.0 / world_size

    @property
    def generator(self) -> torch.Generator:
        return self.indexer.generator

    @property
    def n(self) -> int:
        return self.indexer.n

    def __len__(self) -> int:
        return len(self.indexer)

    def epoch(self) -> Iterator[Tensor]:
        self.weights = []
        for idx in self.indexer.epoch():
            n = idx.numel()
            lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
            self.weight = (hi - lo) / n
            self.weights.append(self.weight)
            yield idx.narrow(0, lo, hi - lo)


def current_processes() -> OneProcess:
    """The plugin for this process: :class:`DataParallel` inside a torchrun session, else :class:`OneProcess`."""
    ctx = distributed.context()
    return OneProcess() if ctx is None else DataParallel(ctx)


def refuse_batched(processes: OneProcess) -> None:
    if processes.world_size > 1:
        raise ConfigError("a batched grid of students trains in one process; launch it without torchrun")
