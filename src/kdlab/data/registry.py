"""Dataset registry: a loader returns raw (un-normalized) train/test tensors for a name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from torch import Tensor

from ..registry import Registry


@dataclass
class RawData:
    """Images as uint8 (N, H, W) / (N, C, H, W) or float in [0, 1]; labels int64."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: List[str]
    source: str
    pixel_max: float = 255.0  # the stored pixel value that means "white" (recorded so raw inputs can be scaled)


# loader(data_dir, download) -> RawData
DatasetLoader = Callable[[Optional[Path], bool], RawData]

DATASETS: Registry[DatasetLoader] = Registry("dataset")
