"""Small CNN: [conv3×3 → ReLU → maxpool2] per stage, then one linear layer.

With ``channels=[64, 256]`` on 1×28×28 inputs this is the 273,802-parameter MNIST teacher used in
KD tutorials; ``channels=[8, 16]`` is the 9,098-parameter student.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor, nn

from .registry import MODELS


class CNN(nn.Module):
    def __init__(self, in_shape: Tuple[int, ...], num_classes: int, channels: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = in_shape
        stages: list[nn.Module] = []
        for out in channels:
            stages += [nn.Conv2d(c, int(out), kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c, h, w = int(out), h // 2, w // 2
        self.features = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(c * h * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x).flatten(1)))


@MODELS.register("cnn")
def cnn(in_shape: Tuple[int, ...], num_classes: int, channels: Sequence[int] = (64, 256), dropout: float = 0.0) -> CNN:
    """``channels``: output channels of each conv stage; ``dropout``: before the classifier."""
    if len(in_shape) != 3:
        raise ValueError(f"cnn needs (C, H, W) inputs, got shape {in_shape}")
    if isinstance(channels, (int, str)) or not all(isinstance(ch, int) and ch > 0 for ch in channels):
        raise ValueError("channels must be a list of positive integers, e.g. [64, 256]")
    if min(in_shape[1:]) < 2 ** len(channels):
        raise ValueError(f"input {in_shape} is too small for {len(channels)} pooling stages")
    return CNN(in_shape, num_classes, list(channels), float(dropout))


