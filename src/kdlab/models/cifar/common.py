"""Helpers shared by the CIFAR family: image-shape check, the reference models' initialisations."""

from __future__ import annotations

import math
from typing import Tuple

from torch import nn


def image_channels(name: str, in_shape: Tuple[int, ...]) -> int:
    """The input channels of ``(C, H, W)`` images; any other shape is refused naming the model."""
    if len(in_shape) != 3:
        raise ValueError(f"{name} needs (C, H, W) images, got input shape {tuple(in_shape)}")
    return int(in_shape[0])


def he_fan_out(model: nn.Module) -> None:
    """Convs He-normal (fan-out), BN weight 1 / bias 0: the init of the reference (and torchvision) ResNets."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def normal_init(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Convs N(0, 2/(k·k·out)), BN 1/0, biases 0, linear weights N(0, ``linear_std``) (None: torch's
    default): the init of the reference WRN, VGG and MobileNetV2."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
