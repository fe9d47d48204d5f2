"""torchvision:/timm: models by name: the prefix registry, library adaptation and local weights."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab import ConfigError
from kdlab.recipes import recipe_from_dict
from kdlab.errors import CheckpointError
from kdlab.models import MODELS, build_model, check_model_params, model_params
from kdlab.models.registry import ModelRegistry
from tests.optional import require

MNIST = (1, 28, 28)


@pytest.fixture
def torchvision():
    return require("torchvision")


@pytest.fixture
def timm():
    return require("timm")


# --- the prefix mechanism (no library needed) ------------------------------------------------


def test_prefix_registry_dispatches_and_keeps_plain_names():
    reg = ModelRegistry("model")
    reg.register("plain")(lambda in_shape, num_classes: nn.Linear(1, num_classes))
    seen = []

    def resolver(name):
        seen.append(name)
        return lambda in_shape, num_classes, **kw: nn.Linear(2, num_classes)

    reg.register_prefix("lib", resolver)
    assert "lib:anything" in reg and "plain" in reg
    assert "other:x" not in reg and "lib" not in reg
    assert reg.get("lib:resnet18")(MNIST, 3).out_features == 3 and seen == ["resnet18"]
    with pytest.raises(ConfigError, match=r"unknown model 'other:x'; choose one of: plain, lib:NAME$"):
        reg.get("other:x")
    with pytest.raises(ValueError, match="already registered"):
        reg.register_prefix("lib", resolver)


def test_builtin_models_unchanged_and_prefixes_listed():
    assert set(MODELS.prefixes()) == {"timm", "torchvision"}
    assert model_params("cnn") == {"channels": (64, 256), "dropout": 0.0}
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'; choose one of: .*cifar-resnet, cnn, mlp, .*"
                                          r"wrn_40_2, timm:NAME, torchvision:NAME$"):
        MODELS.get("resnet")


@pytest.mark.parametrize("library,fix", [
    ("timm", "needs timm: pip install 'kdlab[vision]'"),
    ("torchvision", "needs torchvision: pip install 'kdlab[vision]' torch==2.14.1 torchvision==0.29.1"),
])
def test_missing_library_is_one_line_with_the_pip_command(monkeypatch, library, fix):
    monkeypatch.setitem(sys.modules, library, None)  # makes "import <library>" fail as if absent
    with pytest.raises(ConfigError) as err:
        MODELS.get(f"{library}:resnet18")
    assert fix in str(err.value) and f"'{library}:resnet18'" in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_name_after_prefix():
    with pytest.raises(ConfigError, match=r"'timm:' names no model; e.g. timm:resnet18"):
        MODELS.get("timm:")


# --- building (needs the libraries; CI installs them) --------------------------------------


@pytest.mark.parametrize("name", ["torchvision:resnet18", "timm:mobilenetv3_small_100"])
def test_library_model_adapts_to_greyscale_28px_and_class_count(name, torchvision, timm):
    model = build_model(name, MNIST, 7).eval()
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1
    out = model(torch.randn(2, *MNIST))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_small_input_stem_keeps_resolution(torchvision):
    model = build_model("torchvision:resnet18", MNIST, 10, {"small_input": True}).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.Identity)
    feats = {}

    def keep_shape(module, inputs, output):
        feats["layer4"] = output.shape

    model.layer4.register_forward_hook(keep_shape)
    assert model(torch.randn(2, *MNIST)).shape == (2, 10)
    assert feats["layer4"][-2:] == (4, 4)  # 28 → 28 → 14 → 7 → 4 (ImageNet stem: 1×1)


def test_small_input_refused_without_resnet_stem(timm):
    with pytest.raises(ConfigError, match="small_input needs a ResNet-style model"):
        build_model("timm:mobilenetv3_small_100", MNIST, 10, {"small_input": True})


def test_unknown_names_suggest_close_matches(torchvision, timm):
    with pytest.raises(ConfigError, match=r"unknown model 'torchvision:resnet19'; did you mean torchvision:resnet18"):
        MODELS.get("torchvision:resnet19")
    with pytest.raises(ConfigError, match=r"unknown model 'timm:mobilenetv3_smal_100'; did you mean timm:mobilenetv3_small_100"):
        MODELS.get("timm:mobilenetv3_smal_100")
    with pytest.raises(ConfigError, match=r"see torchvision.models.list_models\(\)"):
        MODELS.get("torchvision:zzzz")


def test_extra_params_pass_through_and_reserved_ones_are_refused(timm):
    model = build_model("timm:test_resnet", MNIST, 10, {"drop_rate": 0.25})  # timm's tiny test model
    assert model.drop_rate == 0.25
    check_model_params("timm:test_resnet", {"drop_rate": 0.25, "weights": None})  # no false rejection
    assert model_params("timm:test_resnet") == {"weights": None, "small_input": False}
    with pytest.raises(ConfigError, match=r"cannot build with \{'drp_rate': 0.1\}.*unexpected keyword argument 'drp_rate'"):
        build_model("timm:test_resnet", MNIST, 10, {"drp_rate": 0.1})
    with pytest.raises(ConfigError, match="'pretrained' is not accepted: kdlab never downloads"):
        build_model("timm:test_resnet", MNIST, 10, {"pretrained": True})


def test_recipe_validates_library_model_names(torchvision):
    base = {"teacher": {"model": {"name": "torchvision:resnet18", "small_input": True}}}
    recipe = recipe_from_dict(base)
    assert recipe.teacher.model.name == "torchvision:resnet18"
    with pytest.raises(ConfigError, match=r"did you mean torchvision:resnet18"):
        recipe_from_dict({"teacher": {"model": {"name": "torchvision:resnet19"}}})


# --- local weights ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory) -> tuple[Path, dict]:
    """A file shaped like ImageNet resnet18 weights (RGB, 1000 classes), with recognisable values."""
    tv = require("torchvision")
    torch.manual_seed(0)
    state = tv.models.resnet18(weights=None, num_classes=1000).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18_imagenet.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DDP-style
    return path, state


def test_imagenet_weights_into_greyscale_10_class_model(imagenet_resnet18, capsys):
    path, state = imagenet_resnet18
    model = build_model("torchvision:resnet18", MNIST, 10, {"weights": str(path)})
    got = model.state_dict()
    assert torch.equal(got["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert torch.equal(got["bn1.running_var"], state["bn1.running_var"])
    assert torch.allclose(got["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))  # RGB folded
    assert got["fc.weight"].shape == (10, 512) and not torch.equal(got["fc.weight"], state["fc.weight"][:10])
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("kdlab: note: resnet18_imagenet.pt: loaded")
    assert "kept fresh (shape adapted to the data): fc.weight, fc.bias" in err[0] and "conv1.weight" in err[0]


def test_weights_of_same_shape_load_exactly_and_silently(torchvision, tmp_path, capsys):
    source = build_model("torchvision:mobilenet_v3_small", (3, 32, 32), 10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = build_model("torchvision:mobilenet_v3_small", (3, 32, 32), 10, {"weights": str(tmp_path / "w.pt")})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    assert capsys.readouterr().err == ""


def test_timm_weights_keep_classifier_fresh(timm, tmp_path, capsys):
    torch.save(build_model("timm:mobilenetv3_small_100", (3, 32, 32), 100).state_dict(), tmp_path / "m.pt")
    model = build_model("timm:mobilenetv3_small_100", (3, 32, 32), 10, {"weights": str(tmp_path / "m.pt")})
    assert model.get_classifier().out_features == 10
    assert "kept fresh (shape adapted to the data): classifier.weight, classifier.bias" in capsys.readouterr().err


def test_weights_of_another_architecture_are_refused(imagenet_resnet18, tmp_path):
    state = dict(imagenet_resnet18[1])
    extra = {**state, "layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)}  # as in a resnet34 file
    missing = {k: v for k, v in state.items() if not k.startswith("layer4.1.")}
    reshaped = {**state, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    for name, sd, message in [
        ("extra.pt", extra, r"do not fit 'torchvision:resnet18' \(unexpected layer1.2.conv1.weight\)"),
        ("missing.pt", missing, r"do not fit 'torchvision:resnet18' \(missing layer4.1.conv1.weight"),
        ("reshaped.pt", reshaped, r"layer1.0.conv1.weight has shape \(64, 64, 1, 1\), 'torchvision:resnet18' needs \(64, 64, 3, 3\)"),
    ]:
        torch.save(sd, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            build_model("torchvision:resnet18", (3, 32, 32), 1000, {"weights": str(tmp_path / name)})


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_files_are_never_unpickled_freely(torchvision, tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": _Exploit(marker)}, fh, protocol=2)
    torch.save({"state_dict": {"x": _Exploit(marker)}}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(CheckpointError, match=f"weights .*{name} cannot be read as a state_dict"):
            build_model("torchvision:resnet18", MNIST, 10, {"weights": str(tmp_path / name)})
    assert not marker.exists()
    with pytest.raises(ConfigError, match=r"weights file .*missing.pt not found"):
        build_model("torchvision:resnet18", MNIST, 10, {"weights": str(tmp_path / "missing.pt")})


def test_a_registration_can_be_removed_and_an_unknown_one_is_one_line():
    from kdlab.registry import Registry

    registry: Registry = Registry("widget")
    registry.register("a")(object)
    registry.unregister("a")
    assert "a" not in registry and registry.names() == []
    with pytest.raises(ConfigError, match="widget 'a' is not registered"):
        registry.unregister("a")
