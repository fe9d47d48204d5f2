"""The CIFAR ResNet (He et al. 2016, §4.2): parameter counts, shapes, shortcuts and its checks."""

from __future__ import annotations

import pytest
import torch

from kdlab import ConfigError
from kdlab.models import build_model, count_parameters
from kdlab.models.resnet_cifar import ZeroPadShortcut
from kdlab.recipes import recipe_from_dict

CIFAR = (3, 32, 32)


def reference_count(depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> int:
    """Parameters from the architecture's definition: 3×3 convs without bias, BN (γ, β) after each,
    parameter-free option-A shortcuts, a (64 → classes) linear layer."""
    n = (depth - 2) // 6
    total = 9 * in_channels * width + 2 * width  # stem conv + BN
    c = width
    for w in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += 9 * c * w + 2 * w + 9 * w * w + 2 * w
            c = w
    return total + c * num_classes + num_classes


@pytest.mark.parametrize("depth,published", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_parameter_counts_match_the_paper(depth, published):  # published: millions
    model = build_model("cifar-resnet", CIFAR, 10, {"depth": depth})
    assert count_parameters(model) == reference_count(depth)
    assert round(count_parameters(model) / 1e6, 2 if depth < 110 else 1) == published  # He et al., Table 6
    assert model(torch.zeros(2, *CIFAR)).shape == (2, 10)


def test_exact_counts_of_the_usual_distillation_pair():
    assert count_parameters(build_model("cifar-resnet", CIFAR, 10, {"depth": 20})) == 269_722
    assert count_parameters(build_model("cifar-resnet", CIFAR, 10, {"depth": 56})) == 853_018
    assert count_parameters(build_model("cifar-resnet", CIFAR, 100, {"depth": 56})) == 853_018 + 64 * 90 + 90


def test_stages_shapes_and_greyscale_input():
    model = build_model("cifar-resnet", CIFAR, 10, {"depth": 20})
    seen = {}
    for name in ("layer1", "layer2", "layer3"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    model(torch.zeros(2, *CIFAR))
    assert seen == {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8)}
    assert len(model.layer1) == 3 and model.fc.in_features == 64
    grey = build_model("cifar-resnet", (1, 28, 28), 10, {"depth": 8, "width": 4})
    assert grey(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert count_parameters(grey) == reference_count(8, in_channels=1, width=4)


def test_zero_pad_shortcut_is_a_subsample_with_zero_channels():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4)
    y = ZeroPadShortcut(4, 8, 2)(x)
    assert y.shape == (2, 8, 2, 2)
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert not y[:, :2].any() and not y[:, 6:].any()


@pytest.mark.parametrize("params,message", [
    ({"depth": 21}, r"teacher.model.depth: must be 6n\+2 with n >= 1 blocks per stage .* got 21"),
    ({"depth": 2}, r"teacher.model.depth: must be 6n\+2"),
    ({"depth": True}, r"teacher.model.depth: must be 6n\+2"),
    ({"depth": "56"}, r"teacher.model.depth: must be 6n\+2 .* got '56'"),
    ({"width": 0}, r"teacher.model.width: must be an integer in \[1, 65536\]"),
    ({"blocks": 3}, r"teacher.model.blocks: unknown parameter for model 'cifar-resnet'; accepted: depth, width"),
])
def test_bad_parameters_are_refused_when_the_recipe_loads(params, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({"dataset": {"name": "cifar10"}, "teacher": {"model": {"name": "cifar-resnet", **params}}})


def test_build_model_refuses_a_bad_depth_directly():
    with pytest.raises(ConfigError, match=r"student.model.depth: must be 6n\+2"):
        build_model("cifar-resnet", CIFAR, 10, {"depth": 19}, where="student.model")
