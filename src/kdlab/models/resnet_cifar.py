"""CIFAR ResNets (He et al. 2016, §4.2): ``cifar-resnet`` with ``depth`` 20, 32, 44, 56, 110, ….

A 3×3 stem conv with 16 filters, then three stages of ``n = (depth − 2) / 6`` basic blocks with
16, 32 and 64 filters (``width`` scales all three), the second and third starting with stride 2,
then global average pooling and one linear layer. Shortcuts that change shape are the paper's
option A (identity on a stride-2 subsample, the new channels zero-padded), so they add no
parameters: ``depth: 20`` has 269,722 parameters and ``depth: 56`` 853,018 for 10 classes, the
0.27M and 0.85M of the paper's Table 6. These are the resnet20/resnet56 pairs CRD and most
CIFAR distillation papers use.

Module names follow torchvision's ResNets (``layer1``–``layer3``, ``fc``), so layer pairs such as
``{layer3: layer3}`` work for FitNets/AT. No ReLU is in-place, so every module's output can be
tapped. Any input size works (adaptive pooling); 32×32 is the one the design targets.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import MODELS


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU.

    Where the shape changes, the shortcut is He et al.'s parameter-free option A
    (:class:`ZeroPadShortcut`, module ``shortcut``) or, with ``projection``, a 1×1 conv + BN (module
    ``downsample``, as RepDistiller's CIFAR ResNets name it).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, projection: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        same = stride == 1 and in_channels == out_channels
        self.skip_name = "downsample" if projection else "shortcut"
        skip: nn.Module = nn.Identity()
        if not same:
            skip = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
                    if projection else ZeroPadShortcut(in_channels, out_channels, stride))
        self.add_module(self.skip_name, skip)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + getattr(self, self.skip_name)(x))


class CifarResNet(nn.Module):
    """A 3×3 stem, three stages of ``blocks`` basic blocks (the 2nd and 3rd start with stride 2), global
    average pooling, one linear layer. ``filters``: (stem, stage 1, stage 2, stage 3) widths, default
    ``(width, width, 2·width, 4·width)``; ``projection``: 1×1-conv shortcuts (see :class:`BasicBlock`)."""

    def __init__(self, in_channels: int, num_classes: int, blocks: int, width: int = 16,
                 filters: Optional[Sequence[int]] = None, projection: bool = False) -> None:
        super().__init__()
        filters = tuple(filters) if filters is not None else (width, width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        c = filters[0]
        for i, w in enumerate(filters[1:]):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and b == 0) else 1, projection))
                c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # He init (fan-out), BN 1/0: the paper's, the reference code's and torchvision's
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_cifar_resnet_params(params: Mapping[str, Any], where: str) -> None:
    """``depth`` must be 6n + 2 (n ≥ 1 blocks per stage); ``width`` a positive integer."""
    depth = params.get("depth", 20)
    if not _positive_int(depth) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"{where}.depth: must be 6n+2 with n >= 1 blocks per stage (8, 14, 20, 32, 44, 56, 110, ...), "
                          f"got {depth!r}")
    width = params.get("width", 16)
    if not _positive_int(width) or width > 2**16:
        raise ConfigError(f"{where}.width: must be an integer in [1, 65536] (16 in the paper), got {width!r}")


@MODELS.register("cifar-resnet")
def cifar_resnet(in_shape: Tuple[int, ...], num_classes: int, depth: int = 20, width: int = 16) -> CifarResNet:
    """``depth``: 6n+2 layers (20, 56, 110 …); ``width``: first stage's filters (16; stages ×1, ×2, ×4)."""
    if len(in_shape) != 3:
        raise ValueError(f"cifar-resnet needs (C, H, W) images, got input shape {tuple(in_shape)}")
    check_cifar_resnet_params({"depth": depth, "width": width}, "model")
    return CifarResNet(int(in_shape[0]), int(num_classes), (depth - 2) // 6, width)


cifar_resnet.check_params = check_cifar_resnet_params  # type: ignore[attr-defined]  # run when a recipe is loaded
