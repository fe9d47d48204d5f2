"""RepDistiller's CIFAR ``ShuffleV1`` (ShuffleNet, Zhang et al. 2018, g = 3) and ``ShuffleV2`` (ShuffleNet
V2, Ma et al. 2018, ×1).

Both start from a 1×1 conv to 24 channels without stride or max-pool, so a 32×32 image reaches the
last stage at 4×4, and end in global average pooling and one linear layer. Tap points:
``layer1``–``layer3`` (stage outputs; V1's after ReLU, V2's after the channel shuffle).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS
from .common import image_channels


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g·c, H, W] → [N, c·g, H, W]: interleave the groups' channels."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1×1 → shuffle → 3×3 depthwise → grouped 1×1; stride 2 concatenates a 3×3 average-pooled
    input (so ``out_channels`` is the new channels only), stride 1 adds the input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.stride, self.first_groups = stride, 1 if in_channels == 24 else groups  # the stem's 24 channels: no grouping
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (240, 480, 960),
                 blocks: Sequence[int] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for i, (w, n) in enumerate(zip(widths, blocks)):
            units: List[nn.Module] = []
            for b in range(n):
                units.append(ShuffleV1Unit(c, w - c if b == 0 else w, 2 if b == 0 else 1, groups))
                c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


class ShuffleV2Unit(nn.Module):
    """Split the channels in half; the second half through 1×1 → BN → ReLU → 3×3 depthwise → BN →
    1×1 → BN → ReLU; concatenate with the first half and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2))))))))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride 2 on both branches: (3×3 depthwise → BN → 1×1 → BN → ReLU) and (1×1 → BN → ReLU → 3×3
    depthwise → BN → 1×1 → BN → ReLU), each to half the output channels, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (116, 232, 464, 1024),
                 blocks: Sequence[int] = (3, 7, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for i, (w, n) in enumerate(zip(widths[:3], blocks)):
            # the reference's stage: one down-sampling unit, then n basic units
            setattr(self, f"layer{i + 1}", nn.Sequential(ShuffleV2Down(c, w), *[ShuffleV2Unit(w) for _ in range(n)]))
            c = w
        self.conv2 = nn.Conv2d(c, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@MODELS.register("ShuffleV1")
def shuffle_v1(in_shape: Tuple[int, ...], num_classes: int) -> ShuffleNetV1:
    """RepDistiller's ShuffleV1: g = 3, stages 240/480/960 with 4/8/4 units."""
    return ShuffleNetV1(image_channels("ShuffleV1", in_shape), int(num_classes))


@MODELS.register("ShuffleV2")
def shuffle_v2(in_shape: Tuple[int, ...], num_classes: int) -> ShuffleNetV2:
    """RepDistiller's ShuffleV2 (×1): stages 116/232/464 with 3/7/3 units, a 1×1 conv to 1024."""
    return ShuffleNetV2(image_channels("ShuffleV2", in_shape), int(num_classes))
