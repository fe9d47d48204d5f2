"""torchvision and timm classifiers by name: ``torchvision:resnet18``, ``timm:mobilenetv3_small_100``.

A library model is built untrained (``weights=None`` / ``pretrained=False``: kdlab never downloads
weights at run time, so a run is reproducible offline), for the dataset's channel count and number
of classes. Parameters a recipe may give (``model: {name: timm:resnet50, ...}``):

* ``weights``: a local ``.pt``/``.pth`` file holding a state_dict (or a dict with ``state_dict`` /
  ``model``), read with ``torch.load(weights_only=True)``. Tensors of the parts adapted to the data
  (classifier for another class count, first conv for another channel count) are kept fresh when
  their shapes differ, said in one line on stderr; RGB stem weights are folded into 1 channel the
  way timm does, so ImageNet features still help on greyscale data.
* ``small_input``: ResNet-style models only: the 7×7/2 stem conv and max-pool become one 3×3/1
  conv (the CIFAR ResNet stem of He et al.), keeping 4× more resolution on 28–32 px images.
* anything else is passed to the library constructor (``drop_rate`` for timm, ``dropout`` for
  torchvision's mobilenets, ...).

Input size: ResNets and MobileNets use adaptive pooling and accept any size ≥ 1 px (28×28 MNIST
ends as a 1×1 map after the 32× down-sampling, which works but wastes capacity: use
``small_input``). Models with fixed position embeddings (ViT, Swin) need their native size.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .registry import MODELS, ModelBuilder

# Versions CI pins; torchvision wheels are built for exactly one torch release.
TORCHVISION_PIN = "pip install 'kdlab[vision]' torch==2.14.1 torchvision==0.29.1"
RESERVED = {
    "num_classes": "comes from the dataset",
    "in_chans": "comes from the dataset",
    "pretrained": "kdlab never downloads weights; download the file once and give weights: path/to/file.pt",
}

Constructor = Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> model


def import_library(library: str, model: str) -> Any:
    """Import torchvision or timm, turning absence or a torch mismatch into one actionable line."""
    try:
        if library == "torchvision":
            import torchvision.models as module  # noqa: F401  (optional: torchvision)

            return module
        import timm as module  # optional: timm

        return module
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != library:
            raise ConfigError(f"model {model!r}: {library} cannot be imported ({exc}); pip install {exc.name}") from None
        fix = f"{TORCHVISION_PIN} (torchvision must match torch; this is torch {torch.__version__})" if library == "torchvision" else "pip install 'kdlab[vision]' (or pip install timm)"
        raise ConfigError(f"model {model!r} needs {library}: {fix}") from None
    except Exception as exc:  # e.g. "operator torchvision::nms does not exist": built for another torch
        first = (str(exc).splitlines() or [""])[0][:160]
        raise ConfigError(
            f"model {model!r}: {library} is installed but fails to import with torch {torch.__version__} "
            f"({type(exc).__name__}: {first}); install a matching pair, e.g. {TORCHVISION_PIN}"
        ) from None


def _unknown(model: str, name: str, choices: Iterable[str], listing: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    prefix = model.split(":", 1)[0]
    hint = f"did you mean {', '.join(prefix + ':' + c for c in close)}?" if close else f"see {listing}"
    return ConfigError(f"unknown model {model!r}; {hint}")


def _replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def first_conv(model: nn.Module) -> Tuple[str, nn.Conv2d]:
    """The first ``Conv2d`` in registration order: the stem of every torchvision classifier."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to the input channels")


def set_in_channels(model: nn.Module, in_channels: int) -> None:
    """Rebuild the stem conv for ``in_channels`` (torchvision models are hard-wired to RGB)."""
    name, conv = first_conv(model)
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ConfigError(f"cannot adapt grouped stem conv {name!r} of {type(model).__name__} to {in_channels} channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    _replace_module(model, name, new.to(conv.weight.device, conv.weight.dtype))


def use_small_input_stem(model: nn.Module, in_channels: int) -> None:
    """7×7/2 conv + max-pool → 3×3/1 conv: the stem CIFAR ResNets use on 32×32 images."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(pool, (nn.MaxPool2d, nn.Identity)):
        raise ConfigError(f"small_input needs a ResNet-style model with conv1 and maxpool; "
                          f"{type(model).__name__} has none: remove small_input")
    model.conv1 = nn.Conv2d(in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None).to(conv.weight.device)
    model.maxpool = nn.Identity()


def _torchvision_constructor(model: str, name: str, kwargs: Dict[str, Any]) -> Constructor:
    tvm = import_library("torchvision", model)
    available = tvm.list_models(module=tvm)  # classifiers only: kdlab distills class logits
    if name not in available:
        raise _unknown(model, name, available, "torchvision.models.list_models()")

    def construct(num_classes: int, in_channels: int) -> nn.Module:
        net = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        set_in_channels(net, in_channels)
        return net

    return construct


def _timm_constructor(model: str, name: str, kwargs: Dict[str, Any]) -> Constructor:
    timm = import_library("timm", model)
    if not timm.is_model(name.split(".")[0]):
        raise _unknown(model, name, timm.list_models(), "timm.list_models()")

    def construct(num_classes: int, in_channels: int) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)

    return construct


LIBRARIES: Dict[str, Callable[[str, str, Dict[str, Any]], Constructor]] = {
    "torchvision": _torchvision_constructor,
    "timm": _timm_constructor,
}


def adapted_keys(construct: Callable[[int, int], nn.Module], num_classes: int, in_channels: int) -> set[str]:
    """state_dict keys whose shape depends on the class or channel count (head, stem).

    Found by building the model again for other counts on the ``meta`` device (no memory, no
    init cost) and comparing shapes: works for any architecture without knowing its head's name.
    """
    with torch.device("meta"):
        ours = {k: v.shape for k, v in construct(num_classes, in_channels).state_dict().items()}
        other = construct(num_classes + 1, in_channels + 1).state_dict()
    return {k for k, shape in ours.items() if k in other and other[k].shape != shape}


def read_state_dict(path: Path, model: str) -> Dict[str, torch.Tensor]:
    """A state_dict from a local file, never unpickling arbitrary objects."""
    if not path.is_file():
        raise ConfigError(f"model {model!r}: weights file {path} not found; give the path of a local .pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors and refused globals come in many types
        first = (str(exc).splitlines() or [""])[0][:160]
        raise CheckpointError(f"weights {path} cannot be read as a state_dict ({type(exc).__name__}: {first}); "
                              f"save it with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights {path} holds no state_dict of tensors; save it with "
                              f"torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _fold_rgb(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem weights for ``in_channels`` inputs, as timm's ``adapt_input_conv`` does."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_weights(net: nn.Module, path: Path, adapted: set[str], model: str) -> List[str]:
    """Load ``path`` into ``net``; returns the keys kept fresh because their shape was adapted.

    Anything else that does not fit (a missing or extra tensor, a shape mismatch outside the
    head and stem) means the file is for another architecture and is refused with one line.
    """
    given = read_state_dict(path, model)
    own = net.state_dict()
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked") and k not in adapted]
    extra = [k for k in given if k not in own]
    if missing or extra:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + ("; " if missing and extra else "") + \
               (f"unexpected {', '.join(extra[:3])}" if extra else "")
        raise CheckpointError(f"weights {path} do not fit {model!r} ({what}); use a file saved from the same architecture")
    load: Dict[str, torch.Tensor] = {}
    fresh: List[str] = [k for k in own if k in adapted and k not in given]  # e.g. a file saved without its head
    folded: List[str] = []
    for key, value in given.items():
        target = own[key].shape
        if value.shape == target:
            load[key] = value
        elif key in adapted and value.dim() == 4 and value.shape[0] == target[0] and value.shape[2:] == target[2:]:
            load[key] = _fold_rgb(value, target[1])
            folded.append(key)
        elif key in adapted:
            fresh.append(key)
        else:
            raise CheckpointError(f"weights {path}: {key} has shape {tuple(value.shape)}, {model!r} needs "
                                  f"{tuple(target)}; use a file saved from the same architecture")
    net.load_state_dict(load, strict=False)
    if fresh or folded:
        parts = [f"kept fresh (shape adapted to the data): {', '.join(fresh)}"] if fresh else []
        parts += [f"RGB stem folded to {own[folded[0]].shape[1]} channel(s): {', '.join(folded)}"] if folded else []
        print(f"kdlab: note: {path.name}: loaded {len(load)}/{len(own)} tensors; {'; '.join(parts)}", file=sys.stderr)
    return fresh


def resolve(library: str) -> Callable[[str], ModelBuilder]:
    """The prefix resolver for ``library``: ``name`` → builder ``fn(in_shape, num_classes, ...)``."""

    def resolver(name: str) -> ModelBuilder:
        model = f"{library}:{name}"
        if not name:
            raise ConfigError(f"model {model!r} names no model; e.g. {library}:resnet18")
        LIBRARIES[library](model, name, {})  # missing library or unknown name: fail at validation time

        def build(in_shape: Tuple[int, ...], num_classes: int, weights: Optional[str] = None,
                  small_input: bool = False, **kwargs: Any) -> nn.Module:
            """``weights``: local state_dict file; ``small_input``: 3×3/1 ResNet stem; rest: constructor kwargs."""
            for key, why in RESERVED.items():
                if key in kwargs:
                    raise ConfigError(f"model {model!r}: parameter {key!r} is not accepted: {why}")
            if len(in_shape) != 3:
                raise ConfigError(f"model {model!r} needs (C, H, W) images, got input shape {tuple(in_shape)}")
            in_channels = int(in_shape[0])
            base = LIBRARIES[library](model, name, kwargs)

            def construct(k: int, c: int) -> nn.Module:
                net = base(k, c)
                if small_input:
                    use_small_input_stem(net, c)
                return net

            try:
                net = construct(int(num_classes), in_channels)
                adapted = adapted_keys(construct, int(num_classes), in_channels) if weights else set()
            except (ConfigError, CheckpointError):
                raise
            except Exception as exc:  # library constructors raise TypeError, AssertionError, RuntimeError...
                first = (str(exc).splitlines() or [""])[0][:200]
                raise ConfigError(f"model {model!r}: cannot build with {kwargs or 'no extra parameters'}: "
                                  f"{type(exc).__name__}: {first}") from None
            if weights:
                load_weights(net, Path(weights).expanduser(), adapted, model)
            return net

        return build

    return resolver


for _library in LIBRARIES:
    MODELS.register_prefix(_library, resolve(_library))
