"""In-memory tensor datasets and index batching.

Data are decoded once into normalized float tensors; a training step gathers its batch with
``index_select`` (one call, no per-sample Python) from a seeded per-epoch permutation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass
class TensorData:
    """Images ``x`` (N, C, H, W) float32, normalized; labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: Tensor) -> "TensorData":
        return TensorData(self.x.index_select(0, idx), self.y.index_select(0, idx))


@dataclass
class DatasetSplits:
    """A dataset ready for training: train/test (and optional validation) tensors plus metadata."""

    name: str
    train: TensorData
    test: TensorData
    classes: List[str]
    val: Optional[TensorData] = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_shape(self) -> Tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def eval_split(self) -> Tuple[str, TensorData]:
        """Validation split when one was carved, else the test split."""
        return ("val", self.val) if self.val is not None else ("test", self.test)


def normalize_images(images: Tensor, mean: Optional[float] = None, std: Optional[float] = None) -> Tuple[Tensor, float, float]:
    """uint8 (0..255) or float (0..1) images, (N, H, W) or (N, C, H, W) → float32 (N, C, H, W), standardized with train-set statistics."""
    x = images.to(torch.float32, copy=True)
    if images.dtype == torch.uint8:
        x = x.div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if mean is None or std is None:
        mean, std = float(x.mean()), float(x.std())
    x.sub_(mean).div_(std)
    return x.contiguous(), mean, std


def carve_validation(train: TensorData, fraction: float, seed: int) -> Tuple[TensorData, Optional[TensorData]]:
    """Split ``fraction`` of the training set off as validation data (seeded, disjoint)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return train, None
    n = len(train)
    n_val = int(round(n * fraction))
    if n_val == 0 or n_val == n:
        raise ConfigError(f"dataset.val_fraction={fraction} leaves an empty split of {n} training samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)


class BatchIndexer:
    """Yields index tensors for one epoch; reshuffled each epoch from its own seeded generator.

    Having its own generator keeps the batch order a function of (seed, epoch) only, so two runs
    that differ in loss or model see the same batches in the same order.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def epoch(self) -> Iterator[Tensor]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        end = len(self) * self.batch_size if self.drop_last else self.n
        return iter(order[:end].split(self.batch_size))
