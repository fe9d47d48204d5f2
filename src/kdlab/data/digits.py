"""The embedded offline default: scikit-learn's bundled 8×8 handwritten digits (1,797 images).

It ships inside the scikit-learn wheel, so the Quickstart runs without any download. The
train/test split is fixed (seed 0, 20 % test, stratified) so every run scores the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .registry import DATASETS, RawData

TEST_FRACTION = 0.2


@DATASETS.register("digits")
def load_digits(data_dir: Optional[Path] = None, download: bool = False) -> RawData:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32))  # (N, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # stratified: 20 % of every class goes to test; sorted so the order does not depend on the split's shuffle
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=bunch.target, random_state=0)
    tr, te = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return RawData(images[tr], labels[tr], images[te], labels[te], [str(i) for i in range(10)], "scikit-learn load_digits",
                   pixel_max=16.0)
