"""The CRD/RepDistiller CIFAR family: parameter counts of the reference models, forward shapes, taps."""

import pytest
import torch
from torch import nn

from kdlab import ConfigError
from kdlab.models import MODELS, build_model, count_parameters

# Parameters for 100 classes, counted by running the reference implementation (github
# HobbitLong/RepDistiller, models/ at commit b84f547, ``model_dict[name](num_classes=100)``, ResNet18/34
# from models/resnetv2.py), not kdlab's code. Rounded to 0.01M they are the counts CIFAR-100
# distillation papers list for these models (resnet56 0.86M, resnet110 1.74M, resnet32x4 7.43M,
# wrn_40_2 2.25M, vgg13 9.46M, ResNet50 23.71M, MobileNetV2 0.81M, ShuffleV1 0.95M, ShuffleV2 1.36M).
REFERENCE = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756, "resnet44": 667_188,
    "resnet56": 861_620, "resnet110": 1_736_564, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436, "vgg19": 20_086_692,
    "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
    "ResNet18": 11_220_132, "ResNet34": 21_328_292, "ResNet50": 23_705_252,
}
SMALL = ["resnet8", "resnet20", "resnet8x4", "wrn_16_1", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_parameter_count_matches_the_reference(name):
    assert name in MODELS
    assert count_parameters(build_model(name, (3, 32, 32), 100, {})) == REFERENCE[name]


def _narrow_resnet(depth, classes=100):
    """By hand: 3x3 convs without bias, BN (2 per channel), a 1x1 conv + BN shortcut where stages change."""
    n = (depth - 2) // 6
    conv = lambda cin, cout, k=3: cin * cout * k * k  # noqa: E731
    stem = conv(3, 16) + 2 * 16
    stage1 = n * (2 * conv(16, 16) + 4 * 16)
    stage2 = conv(16, 32) + conv(32, 32) + 4 * 32 + conv(16, 32, 1) + 2 * 32 + (n - 1) * (2 * conv(32, 32) + 4 * 32)
    stage3 = conv(32, 64) + conv(64, 64) + 4 * 64 + conv(32, 64, 1) + 2 * 64 + (n - 1) * (2 * conv(64, 64) + 4 * 64)
    return stem + stage1 + stage2 + stage3 + 64 * classes + classes


@pytest.mark.parametrize("depth", [8, 20, 56, 110])
def test_narrow_resnets_match_the_formula(depth):
    assert REFERENCE[f"resnet{depth}"] == _narrow_resnet(depth)
    assert count_parameters(build_model(f"resnet{depth}", (3, 32, 32), 10, {})) == _narrow_resnet(depth, 10)


@pytest.mark.parametrize("name", SMALL)
def test_forward_shape_and_taps_are_not_overwritten(name):
    """Every module's output, held by a hook, is unchanged after the forward (no in-place op writes it)."""
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 100, {})
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    held = []
    for module_name, module in model.named_modules():
        if module_name:
            module.register_forward_hook(lambda m, i, o, k=module_name: held.append((k, o, o.detach().clone()))
                                         if isinstance(o, torch.Tensor) else None)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    changed = [k for k, o, copy in held if not torch.equal(o.detach(), copy)]
    assert changed == []
    out.sum().backward()  # and gradients flow through every tap


@pytest.mark.parametrize("name, taps", [
    ("resnet8", {"layer1": (16, 32), "layer2": (32, 16), "layer3": (64, 8)}),
    ("resnet8x4", {"layer1": (64, 32), "layer3": (256, 8)}),
    ("wrn_16_2", {"block1": (32, 32), "block3": (128, 8)}),
    ("vgg8", {"block0": (64, 32), "block3": (512, 4), "block4": (512, 4)}),
    ("MobileNetV2", {"blocks.1": (12, 16), "blocks.6": (160, 2)}),
    ("ShuffleV1", {"layer1": (240, 16), "layer3": (960, 4)}),
    ("ShuffleV2", {"layer3": (464, 4)}),
])
def test_stage_taps_have_the_reference_shapes(name, taps):
    """The stage outputs FitNets/AT pair, at the channels and sizes of the reference's features."""
    model = build_model(name, (3, 32, 32), 100, {})
    modules = dict(model.named_modules())
    shapes = {}
    for key in taps:
        modules[key].register_forward_hook(lambda m, i, o, k=key: shapes.__setitem__(k, tuple(o.shape[1:3])))
    model(torch.randn(2, 3, 32, 32))
    assert shapes == taps


def test_a_non_image_input_is_refused_naming_the_model():
    with pytest.raises(ConfigError, match=r"wrn_40_2 needs \(C, H, W\) images"):
        build_model("wrn_40_2", (784,), 10, {})
