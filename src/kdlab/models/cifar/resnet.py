"""RepDistiller's CIFAR ResNets: ``resnet8/14/20/32/44/56/110`` and the 4×-wide ``resnet8x4``, ``resnet32x4``.

A 3×3 stem conv, three stages of ``(depth − 2) / 6`` basic blocks (the second and third start with
stride 2), global average pooling, one linear layer. Unlike kdlab's ``cifar-resnet`` (He et al.'s
parameter-free option A), a shortcut that changes shape is a 1×1 conv + BN (``downsample``), as in
the reference code, so the parameter counts are the published ones (resnet56: 0.86M for 100 classes).
Widths: stem 16 and stages 16/32/64; the ×4 models stem 32 and stages 64/128/256, so their first
stage also starts with a 1×1 downsample. Tap points: ``layer1``–``layer3`` (outputs after ReLU).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS
from .common import he_fan_out, image_channels


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the (1×1 conv + BN where the shape changes) shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class CifarResNetB(nn.Module):
    """``filters``: (stem, stage 1, stage 2, stage 3) widths; ``blocks`` per stage."""

    def __init__(self, in_channels: int, num_classes: int, blocks: int, filters: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        c = filters[0]
        for i, w in enumerate(filters[1:]):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(c, w, 2 if (i > 0 and b == 0) else 1))
                c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        he_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


NARROW = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)


def _register(name: str, depth: int, filters: Tuple[int, ...]) -> None:
    def build(in_shape: Tuple[int, ...], num_classes: int) -> CifarResNetB:
        return CifarResNetB(image_channels(name, in_shape), int(num_classes), (depth - 2) // 6, filters)

    build.__doc__ = f"RepDistiller's {name}: depth {depth}, widths {filters} (stem, stages)."
    MODELS.register(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, NARROW)
_register("resnet8x4", 8, WIDE)
_register("resnet32x4", 32, WIDE)
