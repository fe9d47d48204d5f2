"""The transfer set: the training examples a distilled student learns from (Hinton et al. 2015 §3).

Distillation need not use the teacher's labelled training set: the student can learn from any
set of inputs the teacher labels with its soft targets, even one that lacks whole classes (the
paper's MNIST transfer set without a single 3). :func:`transfer_indices` picks the examples a
``distill.transfer`` section describes — a class filter, then a seeded random fraction — and
:func:`transfer_split` returns the dataset with that training split (validation and test splits
untouched, so a transfer-set student is scored on the same data as any other).
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from ..config import TransferConfig
from ..errors import ConfigError
from .tensors import DatasetSplits, TensorData

#: Offset of the transfer set's sampling stream from the run's seed.
TRANSFER_SEED_OFFSET = 4049


def transfer_classes(cfg: TransferConfig, num_classes: int) -> List[int]:
    """The class indices the transfer set keeps; a class index the dataset lacks is one line."""
    for name in ("classes", "exclude_classes"):
        bad = [c for c in (getattr(cfg, name) or []) if not 0 <= c < num_classes]
        if bad:
            raise ConfigError(f"distill.transfer.{name}: class {bad[0]} does not exist; the dataset has classes "
                              f"0..{num_classes - 1}")
    if cfg.classes is not None:
        return sorted(cfg.classes)
    kept = [c for c in range(num_classes) if c not in set(cfg.exclude_classes)]
    if not kept:
        raise ConfigError("distill.transfer.exclude_classes: every class is excluded; the transfer set would be empty")
    return kept


def transfer_indices(y: Tensor, cfg: TransferConfig, num_classes: int, seed: int) -> Tensor:
    """Sorted indices into the training split of the examples in the transfer set.

    The fraction is drawn from the examples of the kept classes with a generator of its own
    (``seed`` + :data:`TRANSFER_SEED_OFFSET`), so the set depends on the seed alone.
    """
    kept = torch.tensor(transfer_classes(cfg, num_classes), dtype=y.dtype, device=y.device)
    idx = torch.isin(y, kept).nonzero().flatten()
    if cfg.fraction < 1.0:
        n = int(round(len(idx) * cfg.fraction))
        perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + TRANSFER_SEED_OFFSET))
        idx = idx.index_select(0, perm[:n].to(idx.device)).sort().values
    if len(idx) == 0:
        raise ConfigError(f"distill.transfer keeps no training example (classes {kept.tolist()}, fraction {cfg.fraction}); "
                          "keep more classes or raise the fraction")
    return idx


def transfer_split(data: DatasetSplits, idx: Tensor) -> DatasetSplits:
    """``data`` with its training split cut to ``idx`` (validation, test and metadata unchanged)."""
    train = TensorData(data.train.x.index_select(0, idx), data.train.y.index_select(0, idx))
    info = {k: v for k, v in data.info.items() if k != "fingerprint"}  # a different training split: not the same data
    return DatasetSplits(data.name, train, data.test, data.classes, data.val, info)
