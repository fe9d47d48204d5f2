"""Dataset registry: a loader returns raw (un-normalized) train/test tensors for a name.

Two things can be registered with ``@DATASETS.register("name")``:

* a loader ``loader(data_dir, download) -> RawData`` (what the built-in datasets are);
* a ``torch.utils.data.Dataset`` class whose constructor takes ``train=True/False`` (or
  ``split="train"/"test"``) and optionally ``root`` (or ``data_dir``) and ``download``, like
  torchvision's datasets. kdlab trains from in-memory tensors, so the class is adapted: both
  splits are built once and every sample ``(image, label)`` is read into one tensor per split
  (:func:`dataset_class_loader`). Images may be tensors, numpy arrays or PIL images of one shape,
  ``(H, W)`` or ``(C, H, W)``, uint8 (0-255) or float; labels integers from 0.

Anything else is refused when it is registered, in one line naming the expected signatures.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..registry import Registry
from .paths import data_root


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


@dataclass(frozen=True)
class DatasetShape:
    """What a model needs to be built without reading the data: one normalized input's shape, the classes."""

    in_shape: Tuple[int, ...]
    num_classes: int


# name -> shape, for datasets whose input shape is known without their files (``kdlab layers``);
# a dataset without an entry is loaded to find out.
SHAPES: Registry[DatasetShape] = Registry("dataset shape")


def dataset_shape(name: str) -> Optional[DatasetShape]:
    return SHAPES.get(name) if name in SHAPES else None


# loader(data_dir, download) -> RawData
DatasetLoader = Callable[[Optional[Path], bool], RawData]

EXPECTED = ("register loader(data_dir, download) -> kdlab.data.RawData, or a torch.utils.data.Dataset class "
            "whose constructor takes train=True/False (or split='train'/'test') and optionally root and download")


def _signature(obj: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: trusted as it is
        return None


def _binds(obj: Any, *args: Any) -> bool:
    sig = _signature(obj)
    if sig is None:
        return True
    try:
        sig.bind(*args)
        return True
    except TypeError:
        return False


def _as_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.array(value))  # numpy arrays, PIL images, nested lists (copied: PIL arrays are read-only)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: cannot turn a {type(value).__name__} into a tensor ({exc}); return tensors, "
                          "numpy arrays or PIL images") from None


def _materialize(dataset: Any, where: str) -> Tuple[Tensor, Tensor]:
    """Every ``(image, label)`` of ``dataset`` in one image tensor and one int64 label tensor."""
    try:
        n = len(dataset)
    except TypeError:
        raise ConfigError(f"{where}: the Dataset has no len(); kdlab reads every sample into memory, so it needs a "
                          "map-style Dataset (__len__ and __getitem__)") from None
    if n == 0:
        raise ConfigError(f"{where}: the Dataset is empty")
    images, labels = [], []
    for i in range(n):
        sample = dataset[i]
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise ConfigError(f"{where}: sample {i} is a {type(sample).__name__}; expected an (image, label) pair")
        images.append(_as_tensor(sample[0], f"{where}: image {i}"))
        labels.append(int(_as_tensor(sample[1], f"{where}: label {i}").reshape(-1)[0]))
    shape = images[0].shape
    if not 2 <= len(shape) <= 3:
        raise ConfigError(f"{where}: images must be (H, W) or (C, H, W), got shape {tuple(shape)}")
    odd = next((i for i, x in enumerate(images) if x.shape != shape), None)
    if odd is not None:
        raise ConfigError(f"{where}: image {odd} has shape {tuple(images[odd].shape)}, image 0 {tuple(shape)}; "
                          "every image must have one shape (resize them in the Dataset)")
    x = torch.stack(images)
    x = x if x.dtype == torch.uint8 else x.to(torch.float32)
    y = torch.tensor(labels, dtype=torch.int64)
    if int(y.min()) < 0:
        raise ConfigError(f"{where}: labels must be class indices 0, 1, ...; got {int(y.min())}")
    return x, y


def dataset_class_loader(name: str, cls: type) -> DatasetLoader:
    """A loader for a ``torch.utils.data.Dataset`` class (see the module docstring); refuses a
    constructor it cannot call for both splits, in one line."""
    sig = _signature(cls)
    params = sig.parameters if sig is not None else {}
    split_arg = next((p for p in ("train", "split") if p in params), None)
    if split_arg is None:
        shown = f"{cls.__name__}{sig}" if sig is not None else cls.__name__
        raise ConfigError(f"dataset {name!r}: cannot build the train and test splits of {shown}; {EXPECTED}")
    root_arg = next((p for p in ("root", "data_dir") if p in params), None)
    where = f"dataset {name!r} ({cls.__name__})"

    def load(data_dir: Optional[Path] = None, download: bool = True) -> RawData:
        def build(train: bool) -> Any:
            kwargs: dict = {split_arg: train if split_arg == "train" else ("train" if train else "test")}
            if root_arg is not None:
                kwargs[root_arg] = str(data_root(data_dir))
            if "download" in params:
                kwargs["download"] = download
            return cls(**kwargs)

        train_x, train_y = _materialize(build(True), f"{where}, train split")
        test_x, test_y = _materialize(build(False), f"{where}, test split")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise ConfigError(f"{where}: train images are {tuple(train_x.shape[1:])}, test images {tuple(test_x.shape[1:])}")
        classes = getattr(cls, "classes", None)
        n_classes = int(max(train_y.max(), test_y.max())) + 1
        if not (isinstance(classes, (list, tuple)) and len(classes) >= n_classes):
            classes = [str(i) for i in range(n_classes)]
        return RawData(train_x, train_y, test_x, test_y, [str(c) for c in classes], f"{cls.__module__}.{cls.__qualname__}",
                       pixel_max=255.0 if train_x.dtype == torch.uint8 else 1.0)

    return load


class DatasetRegistry(Registry[DatasetLoader]):
    """The registry of datasets: a loader is stored as it is, a Dataset class through its adapter."""

    def register(self, name: str) -> Callable[[Any], Any]:
        store = super().register(name)

        def decorator(obj: Any) -> Any:
            if isinstance(obj, type) and issubclass(obj, Dataset):
                store(dataset_class_loader(name, obj))
            elif isinstance(obj, Dataset) or not callable(obj):
                raise ConfigError(f"dataset {name!r}: got a {type(obj).__name__} instance; {EXPECTED}")
            elif not _binds(obj, None, True):
                sig = _signature(obj)
                raise ConfigError(f"dataset {name!r}: {getattr(obj, '__name__', type(obj).__name__)}{sig} cannot be "
                                  f"called as loader(data_dir, download); {EXPECTED}")
            else:
                store(obj)
            return obj  # the user's object, unchanged

        return decorator


def check_raw(name: str, raw: Any) -> RawData:
    """What a loader returned, if it is :class:`RawData` (else one line naming the expected signature)."""
    if not isinstance(raw, RawData):
        raise ConfigError(f"dataset {name!r}: the registered loader returned a {type(raw).__name__}, not "
                          f"kdlab.data.RawData; {EXPECTED}")
    return raw


DATASETS: DatasetRegistry = DatasetRegistry("dataset")
