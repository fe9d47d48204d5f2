"""The embedded offline default: scikit-learn's bundled 8×8 handwritten digits (1,797 images).

It ships inside the scikit-learn wheel, so the Quickstart runs without any download. The
train/test split is fixed — scikit-learn's ``train_test_split`` with ``stratify`` on the labels,
20 % test, ``random_state=0`` — so every run scores the same images and every class keeps its share
in both parts. The split's ``random_state`` is 0 by convention, never chosen from results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .registry import DATASETS, SHAPES, DatasetShape, RawData

TEST_FRACTION = 0.2
SPLIT_RANDOM_STATE = 0


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices of scikit-learn's stratified split (20 % test, random_state 0)."""
    from sklearn.model_selection import train_test_split  # start-up time: scikit-learn loads only for digits

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_RANDOM_STATE,
    )
    return np.sort(train_idx), np.sort(test_idx)


SHAPES.register("digits")(DatasetShape((1, 8, 8), 10))


@DATASETS.register("digits")
def load_digits(data_dir: Optional[Path] = None, download: bool = False) -> RawData:
    from sklearn.datasets import load_digits as sk_load_digits  # start-up time: as above

    bunch = sk_load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32))  # (N, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = (torch.from_numpy(i) for i in split_indices(bunch.target))
    return RawData(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], [str(i) for i in range(10)],
                   "scikit-learn load_digits", pixel_max=16.0)
