"""The toy data and teacher the stored-teacher-signal tests share: 48 random 1×8×8 images of 5
classes (the first 16 as the test split) and a seeded small CNN teacher."""

import torch

from kdlab.data import DatasetSplits, TensorData
from kdlab.models import build_model


def toy_data(n: int = 48) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)
    return DatasetSplits("toy", TensorData(x, y), TensorData(x[:16], y[:16]), list("abcde"))


def toy_teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("cnn", (1, 8, 8), 5, {"channels": [6, 8]})
