"""RepDistiller's CIFAR ResNets: ``resnet8/14/20/32/44/56/110`` and the 4×-wide ``resnet8x4``, ``resnet32x4``.

kdlab's CIFAR ResNet (:class:`~kdlab.models.resnet_cifar.CifarResNet`: a 3×3 stem conv, three stages
of ``(depth − 2) / 6`` basic blocks, global average pooling, one linear layer) with the reference
code's shortcuts: unlike ``cifar-resnet`` (He et al.'s parameter-free option A), a shortcut that
changes shape is a 1×1 conv + BN (``downsample``), as in
the reference code, so the parameter counts are the published ones (resnet56: 0.86M for 100 classes).
Widths: stem 16 and stages 16/32/64; the ×4 models stem 32 and stages 64/128/256, so their first
stage also starts with a 1×1 downsample. Tap points: ``layer1``–``layer3`` (outputs after ReLU).
"""

from __future__ import annotations

from typing import Tuple

from ..registry import MODELS
from ..resnet_cifar import CifarResNet
from .common import image_channels


NARROW = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)


def _register(name: str, depth: int, filters: Tuple[int, ...]) -> None:
    def build(in_shape: Tuple[int, ...], num_classes: int) -> CifarResNet:
        return CifarResNet(image_channels(name, in_shape), int(num_classes), (depth - 2) // 6, filters=filters, projection=True)

    build.__doc__ = f"RepDistiller's {name}: depth {depth}, widths {filters} (stem, stages)."
    MODELS.register(name)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, NARROW)
_register("resnet8x4", 8, WIDE)
_register("resnet32x4", 32, WIDE)
