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

    bunch = sk_load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32))  # (N, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    rng = np.random.default_rng(0)
    test_idx = []
    for c in range(10):  # stratified: 20 % of every class goes to test
        members = np.flatnonzero(bunch.target == c)
        rng.shuffle(members)
        test_idx.extend(members[: int(round(len(members) * TEST_FRACTION))])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_idx] = True
    tr, te = torch.from_numpy(~test_mask), torch.from_numpy(test_mask)
    return RawData(images[tr], labels[tr], images[te], labels[te], [str(i) for i in range(10)], "scikit-learn load_digits",
                   pixel_max=16.0)
