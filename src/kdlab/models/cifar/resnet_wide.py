"""RepDistiller's ``ResNet18``, ``ResNet34``, ``ResNet50`` for 32×32 images (its ``resnetv2.py``).

The ImageNet ResNets' stages (64/128/256/512 filters; basic blocks for 18/34, bottlenecks of
expansion 4 for 50) behind a 3×3 stride-1 stem with no max-pool, so a 32×32 image reaches the last
stage at 4×4. Shortcuts that change shape are 1×1 conv + BN (``shortcut``). ResNet50 has 23.7M
parameters for 100 classes. Tap points: ``layer1``–``layer4`` (outputs after ReLU).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Type

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS
from .common import he_fan_out, image_channels


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_channels, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_channels, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNetCifarStem(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, block: Type[nn.Module], blocks: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for b in range(n):
                stage.append(block(c, planes, 2 if (i > 0 and b == 0) else 1))
                c = planes * block.expansion  # type: ignore[attr-defined]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)
        he_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


def _register(name: str, block: Type[nn.Module], blocks: Tuple[int, ...]) -> None:
    def build(in_shape: Tuple[int, ...], num_classes: int) -> ResNetCifarStem:
        return ResNetCifarStem(image_channels(name, in_shape), int(num_classes), block, blocks)

    build.__doc__ = f"RepDistiller's {name} for 32×32 images: {block.__name__}s {blocks}."
    MODELS.register(name)(build)


_register("ResNet18", BasicBlock, (2, 2, 2, 2))
_register("ResNet34", BasicBlock, (3, 4, 6, 3))
_register("ResNet50", Bottleneck, (3, 4, 6, 3))
