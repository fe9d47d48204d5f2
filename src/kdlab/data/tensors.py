"""In-memory tensor datasets and index batching.

Data are decoded once into normalized float tensors; a training step gathers its batch with
``index_select`` (one call, no per-sample Python) from a seeded per-epoch permutation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

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

    def to(self, device: torch.device) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device))

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

    def to(self, device: torch.device) -> "DatasetSplits":
        """The same splits with every tensor on ``device`` (no copy when already there)."""
        if self.train.x.device == torch.device(device):
            return self
        return DatasetSplits(self.name, self.train.to(device), self.test.to(device), self.classes,
                             None if self.val is None else self.val.to(device), dict(self.info))

    def eval_split(self) -> Tuple[str, TensorData]:
        """Validation split when one was carved, else the test split."""
        return ("val", self.val) if self.val is not None else ("test", self.test)


def tensor_fingerprint(tensors: Sequence[Optional[Tensor]], extra: str = "") -> str:
    """sha256 over the dtype, shape and bytes of ``tensors`` (and ``extra``): the data's identity.

    Used as part of the teacher cache key, so a dataset whose files changed under the same name
    never reuses a teacher trained on the old content. Hashing MNIST's raw uint8 tensors is cheap
    next to loading them; it is done once per data load.
    """
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype};{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(data: "DatasetSplits") -> str:
    """The content fingerprint recorded at load time, or one computed from the splits themselves."""
    known = data.info.get("fingerprint")
    if isinstance(known, str):
        return known
    val = data.val
    fp = tensor_fingerprint([data.train.x, data.train.y, None if val is None else val.x, None if val is None else val.y,
                             data.test.x, data.test.y], "splits")
    data.info["fingerprint"] = fp
    return fp


def input_spec(data: "DatasetSplits") -> Dict[str, Any]:
    """How to turn raw pixels into this model's input, stored in every checkpoint.

    ``x = (pixels / pixel_max - mean) / std``, shaped ``(N, *shape)``; ``pixel_max`` is the value
    of a white pixel in the dataset's own files (255 for IDX bytes, 16 for scikit-learn digits).
    """
    spec: Dict[str, Any] = {"shape": list(data.in_shape)}
    if "mean" in data.info and "std" in data.info:
        spec.update(mean=float(data.info["mean"]), std=float(data.info["std"]),
                    pixel_max=float(data.info.get("pixel_max", 255.0)),
                    formula="x = (pixels / pixel_max - mean) / std")
    return spec


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
