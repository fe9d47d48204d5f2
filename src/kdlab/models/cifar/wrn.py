"""Wide ResNets (Zagoruyko & Komodakis 2016) as RepDistiller builds them: ``wrn_16_1``, ``wrn_16_2``,
``wrn_40_1``, ``wrn_40_2`` (depth 6n+4, widen factor k).

Pre-activation blocks (BN → ReLU → conv3×3, twice); a block that changes the width has a 1×1 conv
shortcut on the pre-activated input. A 16-filter stem, stages of 16k/32k/64k filters, a final BN +
ReLU, global average pooling, one linear layer. Tap points: ``block1``–``block3`` (block outputs,
before the next block's BN), ``bn1`` (the last BN, before its ReLU).
"""

from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS
from .common import image_channels, normal_init


class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.equal = in_channels == out_channels
        self.shortcut = None if self.equal else nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int, widen: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        for i in range(3):
            stage = [WideBlock(widths[i] if b == 0 else widths[i + 1], widths[i + 1], (1 if i == 0 else 2) if b == 0 else 1)
                     for b in range(n)]
            setattr(self, f"block{i + 1}", nn.Sequential(*stage))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        normal_init(self, linear_std=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.avgpool(F.relu(self.bn1(x))).flatten(1))


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def build(in_shape: Tuple[int, ...], num_classes: int) -> WideResNet:
        return WideResNet(image_channels(name, in_shape), int(num_classes), depth, widen)

    build.__doc__ = f"WRN-{depth}-{widen} (RepDistiller's {name})."
    MODELS.register(name)(build)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
