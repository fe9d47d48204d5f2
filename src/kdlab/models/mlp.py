"""Fully connected classifier: the 784-1200-1200-10 teacher and 784-20-20-10 student of Hinton et al."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

from torch import Tensor, nn

from .dropout import FastDropout
from .registry import MODELS


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int], dropout: float = 0.0,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [FastDropout(input_dropout)] if input_dropout > 0 else []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(FastDropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


@MODELS.register("mlp")
def mlp(in_shape: Tuple[int, ...], num_classes: int, hidden: Sequence[int] = (1200, 1200), dropout: float = 0.0,
        input_dropout: float = 0.0) -> MLP:
    """``hidden``: widths of the hidden layers; ``dropout``: rate after every hidden ReLU;
    ``input_dropout``: rate on the input pixels (Hinton et al. 2012 drop 20% of MNIST's)."""
    if isinstance(hidden, (int, str)) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError("hidden must be a list of positive integers, e.g. [1200, 1200]")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= float(input_dropout) < 1.0:
        raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
    return MLP(math.prod(in_shape), num_classes, list(hidden), float(dropout), float(input_dropout))
