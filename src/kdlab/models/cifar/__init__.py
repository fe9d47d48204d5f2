"""The CIFAR model family of CRD (Tian et al. 2020) and its code base RepDistiller, by the same names.

``resnet8`` … ``resnet110``, ``resnet8x4``, ``resnet32x4`` (:mod:`.resnet`), ``ResNet18/34/50``
(:mod:`.resnet_wide`), ``wrn_16_1`` … ``wrn_40_2`` (:mod:`.wrn`), ``vgg8`` … ``vgg19`` (the
batch-norm VGGs RepDistiller names so, :mod:`.vgg`), ``MobileNetV2`` (width 0.5, expansion 6, :mod:`.mobilenet`),
``ShuffleV1``, ``ShuffleV2`` (:mod:`.shufflenet`). Layouts and parameter counts match the reference
models, so published teacher–student pairs are reproduced as published. Every ReLU is out of place,
so any module's output can be tapped for FitNets/AT (``layer3``, ``block3``, ``blocks.6``, …).
Importing this package registers them all.
"""

from . import mobilenet, resnet, resnet_wide, shufflenet, vgg, wrn  # noqa: F401  (registration)
