"""RepDistiller's CIFAR ``MobileNetV2`` (its ``mobile_half``: width 0.5, expansion 6), from Route
Constrained Optimization (Jin et al. 2019).

A 3×3 stride-2 stem (16 filters at width 0.5), seven stages of inverted residuals (1×1 expand → BN →
ReLU → 3×3 depthwise → BN → ReLU → 1×1 project → BN; identity shortcut where the shape is kept)
with the paper's (t, c, n, s) table, every block expanding even when t = 1 as the reference does,
then a 1×1 conv to 1280 channels, global average pooling and one linear layer. ReLUs are plain
(ReLU6 in torchvision's) and out of place. Tap points: ``blocks.0``–``blocks.6``, ``conv2``.
"""

from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn

from ..registry import MODELS
from .common import image_channels, normal_init

#: (expansion t, channels c, blocks n, first stride s) at width 1; t = None means the model's T
SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
           (None, 160, 3, 2), (None, 320, 1, 1))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, expand: int = 6, width: float = 0.5) -> None:
        super().__init__()
        c = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, c, 3, 2)
        stages = []
        for t, channels, n, s in SETTING:
            out, layers = int(channels * width), []
            for b in range(n):
                layers.append(InvertedResidual(c, out, s if b == 0 else 1, expand if t is None else t))
                c = out
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(c, last, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        normal_init(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.blocks(self.conv1(x)))
        return self.classifier(self.avgpool(x).flatten(1))


@MODELS.register("MobileNetV2")
def mobilenet_v2(in_shape: Tuple[int, ...], num_classes: int) -> CifarMobileNetV2:
    """RepDistiller's MobileNetV2 for CIFAR: width 0.5, expansion 6."""
    return CifarMobileNetV2(image_channels("MobileNetV2", in_shape), int(num_classes))
