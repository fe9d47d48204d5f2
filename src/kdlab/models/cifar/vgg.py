"""RepDistiller's CIFAR VGGs with batch norm: ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``.

Five blocks of 3×3 conv (with bias) + BN + ReLU, 64/128/256/512/512 filters (``vgg8``: one conv a
block; the others VGG's configurations A, B, D, E); 2×2 max-pools after blocks 0–2 (and after block
3 only when its map is larger than 4×4, i.e. for 64×64 inputs, as the reference does), global
average pooling, one linear layer (the ImageNet VGG's FC layers removed). Each block ends at its
last BN (``block0``–``block4``, the pre-activation CRD taps); the ReLU after it is functional.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS
from .common import image_channels, normal_init

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_channels = w
    return nn.Sequential(*layers[:-1])  # the last ReLU is applied in forward, so the block's output is its BN's


class CifarVGG(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, config: Sequence[Sequence[int]]) -> None:
        super().__init__()
        c = in_channels
        for i, widths in enumerate(config):
            setattr(self, f"block{i}", _block(widths, c))
            c = widths[-1]
        self.pool = nn.MaxPool2d(2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        normal_init(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(3):
            x = self.pool(F.relu(getattr(self, f"block{i}")(x)))
        x = F.relu(self.block3(x))
        if x.shape[-1] > 4:
            x = self.pool(x)
        x = F.relu(self.block4(x))
        return self.classifier(self.avgpool(x).flatten(1))


def _register(name: str) -> None:
    def build(in_shape: Tuple[int, ...], num_classes: int) -> CifarVGG:
        return CifarVGG(image_channels(name, in_shape), int(num_classes), CONFIGS[name])

    build.__doc__ = f"RepDistiller's {name} (batch-norm VGG, block widths {CONFIGS[name]})."
    MODELS.register(name)(build)


for _name in CONFIGS:
    _register(_name)
