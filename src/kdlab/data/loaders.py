"""Users' own data: any ``Dataset``/``DataLoader``, per-sample augmentation included.

In-memory tensors (:class:`~kdlab.data.tensors.DatasetSplits`) are kdlab's fast path; a user's
``DataLoader`` is the general one. With a loader the teacher runs on every batch the student
sees (the same augmented images), so its logits are never cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError


@dataclass
class LoaderSplits:
    """Training loader plus optional validation/test loaders; ``num_classes`` of the task."""

    train: DataLoader
    num_classes: int
    val: Optional[DataLoader] = None
    test: Optional[DataLoader] = None
    name: str = "custom"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.val is None and self.test is None:
            raise ConfigError("give a validation or test DataLoader: kdlab evaluates the student after every epoch")
        if not int(self.num_classes) >= 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")

    @property
    def in_shape(self) -> Tuple[int, ...]:
        x, _, _ = unpack_batch(next(iter(self.train)))
        return tuple(x.shape[1:])


class IndexedDataset(Dataset):
    """Wraps a ``Dataset`` so each item also carries its index: ``(x, y, index)``.

    Methods that keep per-sample state (CRD's memory bank) need the index; wrap the training
    dataset in this before building its ``DataLoader``.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tuple[Any, Any, int]:
        x, y = self.dataset[i][:2]
        return x, y, i


def unpack_batch(item: Any) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(x, y)`` or ``(x, y, index)`` from a loader; anything else is a one-line error."""
    if isinstance(item, (tuple, list)) and len(item) in (2, 3) and isinstance(item[0], Tensor):
        y = item[1] if isinstance(item[1], Tensor) else torch.as_tensor(item[1])
        idx = None if len(item) == 2 else torch.as_tensor(item[2])
        return item[0], y, idx
    raise ConfigError(
        f"a DataLoader batch must be (images, labels) or (images, labels, indices) tensors, got {type(item).__name__}"
        f"{'' if not isinstance(item, (tuple, list)) else f' of {len(item)} items'}; return (x, y) from your Dataset"
    )


def loader_batches(loader: DataLoader, device: Optional[torch.device] = None) -> Iterator[Tuple[Tensor, Tensor, Optional[Tensor]]]:
    for item in loader:
        x, y, idx = unpack_batch(item)
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y, idx
