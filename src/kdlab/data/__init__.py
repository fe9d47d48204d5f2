"""Datasets as in-memory tensors. Importing this package registers every built-in dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import cifar, digits, mnist_family  # noqa: F401  (registration)
from .registry import DATASETS, SHAPES, DatasetShape, RawData, check_raw, dataset_shape
from .tensors import (
    BatchIndexer, DatasetSplits, TensorData, carve_validation, data_fingerprint, input_spec, normalize_images, tensor_fingerprint,
)


def load_dataset(
    name: str,
    data_dir: Optional[str | Path] = None,
    download: bool = True,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> DatasetSplits:
    """Load ``name`` into normalized tensors, optionally carving a validation split.

    Normalization statistics come from the images actually used for training (after the
    validation split is removed), so neither validation nor test data leak into them.
    """
    raw = check_raw(name, DATASETS.get(name)(Path(data_dir) if data_dir else None, download))
    split = f"val_fraction={val_fraction!r};seed={seed if val_fraction else None}"
    fingerprint = tensor_fingerprint([raw.train_x, raw.train_y, raw.test_x, raw.test_y], split)
    train_raw = TensorData(raw.train_x, raw.train_y)
    train_raw, val_raw = carve_validation(train_raw, val_fraction, seed)
    train_x, mean, std = normalize_images(train_raw.x)
    test_x, _, _ = normalize_images(raw.test_x, mean, std)
    val = None
    if val_raw is not None:
        val = TensorData(normalize_images(val_raw.x, mean, std)[0], val_raw.y)
    return DatasetSplits(
        name=name,
        train=TensorData(train_x, train_raw.y),
        test=TensorData(test_x, raw.test_y),
        classes=raw.classes,
        val=val,
        info={"source": raw.source, "mean": mean, "std": std, "pixel_max": raw.pixel_max, "fingerprint": fingerprint},
    )


__all__ = ["DATASETS", "SHAPES", "DatasetShape", "dataset_shape", "RawData", "BatchIndexer", "DatasetSplits", "TensorData", "data_fingerprint", "input_spec", "load_dataset"]
