"""Intermediate features by module name on unmodified models, through forward hooks.

Users bring a ResNet or their own ``nn.Module``; they should not have to rewrite its ``forward``
to return ``(logits, feats)`` as mdistiller requires. A :class:`FeatureTap` records the output of
named submodules (``layer3``, ``features.6``, ``blocks.2.mlp``) during the normal forward, in the
spirit of torchdistill's ``ForwardHookManager``, and leaves the model exactly as it was once removed.
:func:`layer_table` lists every module with its output shape so users can pick the names.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import ConfigError

__all__ = ["PENULTIMATE", "FeatureTap", "LayerRow", "first_tensor", "format_layer_table", "layer_table", "eval_probe", "penultimate", "resolve_module"]


#: The feature name meaning "the input of the last ``nn.Linear`` the forward runs": the penultimate
#: feature (a ResNet's pooled ``fc`` input, an MLP's last hidden layer) that RKD and CRD use by
#: default. It follows the forward, not the registration order, and needs no module name.
PENULTIMATE = "<penultimate>"


def _layers_hint(role: str) -> str:
    flag = f" --role {role}" if role in ("teacher", "student") else ""
    return f"(see kdlab layers RECIPE{flag})"


def resolve_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """``model.get_submodule(name)``, but a typo gives one line listing the closest module names."""
    if not isinstance(name, str):
        raise ConfigError(f"{role} module names must be strings like 'layer3', got {name!r} {_layers_hint(role)}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    candidates = [n for n, _ in model.named_modules() if n]
    closest = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if closest:
        listing = "closest: " + ", ".join(closest)
    else:
        top = [n for n, _ in model.named_children()]
        listing = "top-level modules: " + (", ".join(top[:8]) + (", ..." if len(top) > 8 else "") if top else "none")
    raise ConfigError(f"{role} has no module {name!r}; {listing} {_layers_hint(role)}")


def first_tensor(output: Any) -> Optional[Tensor]:
    """The tensor a tap keeps from a module output.

    Modules such as ``nn.LSTM`` or ``nn.MultiheadAttention`` return tuples whose first element is
    the main output, and Hugging Face style models return ordered dicts; so: a tensor is kept as
    is, a tuple/list gives its first tensor element, a mapping its first tensor value (in order).
    ``None`` when there is no tensor at the top level.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((item for item in output if isinstance(item, Tensor)), None)
    if isinstance(output, dict):
        return next((item for item in output.values() if isinstance(item, Tensor)), None)
    return None


def _version(t: Tensor) -> Optional[int]:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter (and cannot be changed)
        return None


def _in_place_fix(model: nn.Module, name: str) -> str:
    """Where to tap instead when a later in-place op overwrote ``name``'s output.

    In a ``Sequential`` the next child runs next (typically the in-place ReLU), so its output is
    the changed tensor; elsewhere (``out += identity`` inside a residual block) the enclosing block
    is the safe choice.
    """
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name)
    if isinstance(parent, nn.Sequential):
        children = [n for n, _ in parent.named_children()]
        child = name.rpartition(".")[2]
        if child in children and children.index(child) + 1 < len(children):
            sibling = children[children.index(child) + 1]
            full = f"{parent_name}.{sibling}" if parent_name else sibling
            return f"tap {full!r} instead"
    if parent_name:
        return f"tap the enclosing {parent_name!r} instead"
    return "tap the module that changes it instead"


class FeatureTap:
    """Outputs of named submodules of ``model`` from its latest forward pass, by name.

    Only references are stored (no copies): the student's features keep their autograd graph so
    a feature loss trains the student, and a teacher run under ``no_grad`` yields plain tensors.
    Every forward of ``model`` first clears the previous step's features (a pre-hook on the root),
    so no graph outlives its step; :meth:`clear` drops them earlier. If a module runs several times
    in one forward, the last call wins. Copies of the model (``copy.deepcopy``) do not report here.

    Use as a context manager, or call :meth:`remove`: afterwards the model carries no hook of ours.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        if isinstance(names, str):
            names = [names]
        self.model = model
        self.role = role
        self.names: Tuple[str, ...] = tuple(dict.fromkeys(names))  # ordered, without duplicates
        targets = {name: resolve_module(model, name, role) for name in self.names if name != PENULTIMATE}
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)] if PENULTIMATE in self.names else []
        if PENULTIMATE in self.names and not linears:
            raise ConfigError(f"the {role} has no nn.Linear, so it has no default penultimate feature; "
                              f"name a layer instead {_layers_hint(role)}")
        self._features: Dict[str, Tuple[Tensor, Optional[int]]] = {}
        self._non_tensor: Dict[str, str] = {}
        self._handles: List[RemovableHandle] = []
        #: Which ``nn.Linear`` gave the penultimate feature in the latest forward.
        self.penultimate_layer: Optional[str] = None
        # Closures, not bound methods: ``copy.deepcopy(model)`` copies functions by reference, so a
        # copy neither drags this tap (and its graph-carrying tensors) along nor writes into it.
        self._handles.append(model.register_forward_pre_hook(self._make_pre_hook(model)))
        for name, module in targets.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name, module)))
        for name, module in linears:  # the last Linear to run wins
            self._handles.append(module.register_forward_pre_hook(self._make_input_hook(name, module)))

    def _make_pre_hook(self, root: nn.Module) -> Callable[..., None]:
        def clear_on_forward(module: nn.Module, args: Any) -> None:
            if module is root:
                self.clear()

        return clear_on_forward

    def _make_hook(self, name: str, target: nn.Module) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if module is not target:
                return
            tensor = first_tensor(output)
            if tensor is None:
                self._non_tensor[name] = type(output).__name__
                self._features.pop(name, None)
            else:
                self._non_tensor.pop(name, None)
                self._features[name] = (tensor, _version(tensor))

        return record

    def _make_input_hook(self, name: str, target: nn.Module) -> Callable[..., None]:
        def record_input(module: nn.Module, args: Any) -> None:
            if module is target and args and isinstance(args[0], Tensor):
                self._features[PENULTIMATE] = (args[0], _version(args[0]))
                self.penultimate_layer = name

        return record_input

    @property
    def active(self) -> bool:
        """False once :meth:`remove` has run."""
        return bool(self._handles)

    def __getitem__(self, name: str) -> Tensor:
        """The output of module ``name`` in the latest forward pass.

        Raises a one-line :class:`ConfigError` when the module did not run, returned no tensor, or
        its output was later overwritten in place (``ReLU(inplace=True)`` right after a conv) — in
        that case the stored values are no longer what the module produced.
        """
        if name not in self.names:
            raise KeyError(f"{name!r} is not tapped; tapped modules: {', '.join(self.names)}")
        if name in self._non_tensor:
            raise ConfigError(
                f"{self.role} module {name!r} returns {self._non_tensor[name]}, not a tensor; "
                f"pick a module that outputs a tensor {_layers_hint(self.role)}"
            )
        if name == PENULTIMATE and name not in self._features:
            raise ConfigError(f"no nn.Linear of the {self.role} ran in its latest forward, so it has no penultimate "
                              f"feature; name a layer instead {_layers_hint(self.role)}")
        if name not in self._features:
            raise ConfigError(
                f"{self.role} module {name!r} did not run in the latest forward pass; "
                f"pick a module the forward uses {_layers_hint(self.role)}"
            )
        tensor, version = self._features[name]
        if version is not None and _version(tensor) != version:
            raise ConfigError(
                f"{self.role} module {name!r}: its output was overwritten in place by a later layer "
                f"(e.g. ReLU(inplace=True)) before the loss read it; {_in_place_fix(self.model, name)}"
            )
        return tensor

    def outputs(self) -> Dict[str, Tensor]:
        """All tapped outputs of the latest forward pass, in the order the names were given."""
        return {name: self[name] for name in self.names}

    def clear(self) -> None:
        """Drop stored features (and the graphs they hold) now rather than at the next forward."""
        self._features.clear()
        self._non_tensor.clear()
        self.penultimate_layer = None

    def remove(self) -> None:
        """Detach every hook this tap registered and drop stored features; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"FeatureTap({self.role}, {list(self.names)}, {state})"


class LayerRow(NamedTuple):
    """One module of :func:`layer_table`; ``shape`` is ``None`` when the output is not one tensor."""

    name: str
    type: str
    output: str
    shape: Optional[Tuple[int, ...]]
    params: int


def _describe(output: Any, depth: int = 0) -> str:
    """A short, readable description of any module output, shapes as ``[2, 64, 7, 7]``."""
    if isinstance(output, Tensor):
        return "[" + ", ".join(str(d) for d in output.shape) + "]"
    if depth >= 2:
        return "..."
    if isinstance(output, (tuple, list)):
        inner = ", ".join(_describe(item, depth + 1) for item in output[:4])
        more = ", ..." if len(output) > 4 else ""
        return f"({inner}{more})" if isinstance(output, tuple) else f"[{inner}{more}]"
    if isinstance(output, dict):
        items = list(output.items())
        inner = ", ".join(f"{key}: {_describe(value, depth + 1)}" for key, value in items[:4])
        return "{" + inner + (", ..." if len(items) > 4 else "") + "}"
    return "None" if output is None else type(output).__name__


def _example_batch(model: nn.Module, example_input: Union[Tensor, Sequence[int]], batch_size: int) -> Tensor:
    if isinstance(example_input, Tensor):
        return example_input
    reference = next(model.parameters(), None)
    reference = reference if reference is not None else next(model.buffers(), None)
    # zeros, not random: the probe must not consume the global RNG and shift a seeded run
    factory = {"device": reference.device, "dtype": reference.dtype} if reference is not None else {}
    return torch.zeros((batch_size, *(int(d) for d in example_input)), **factory)


@contextlib.contextmanager
def eval_probe(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradient for a probing forward (BatchNorm statistics untouched, dropout off);
    afterwards every module's own train/eval flag is restored, whatever it was."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def layer_table(
    model: nn.Module,
    example_input: Union[Tensor, Sequence[int]],
    batch_size: int = 2,
    role: str = "model",
) -> List[LayerRow]:
    """Every named submodule with its type, output on ``example_input`` and parameter count.

    ``example_input`` is a batch, or the shape of one sample (a zero batch of ``batch_size`` is
    built on the model's device). The probe runs in eval mode under ``no_grad`` so BatchNorm
    statistics are untouched; every module's own train/eval flag is restored and no hook remains.
    Parameter counts include submodules. Modules the forward never calls show ``not run``.
    """
    batch = _example_batch(model, example_input, batch_size)
    modules = [(name, module) for name, module in model.named_modules() if name]
    outputs: Dict[str, Any] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            outputs[name] = output

        return record

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules]
    try:
        with eval_probe(model):
            model(batch)
    except Exception as exc:  # any model error: report it as the user's input/model mismatch
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{role} forward on an input of shape {list(batch.shape)} failed: {first_line}; "
            "check the model's expected input shape"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, module in modules:
        ran = name in outputs
        output = outputs.get(name)
        rows.append(
            LayerRow(
                name=name,
                type=type(module).__name__,
                output=_describe(output) if ran else "not run",
                shape=tuple(output.shape) if isinstance(output, Tensor) else None,
                params=sum(p.numel() for p in module.parameters()),
            )
        )
    return rows


def penultimate(model: nn.Module, example_input: Union[Tensor, Sequence[int]], batch_size: int = 2) -> Optional[Tuple[str, Tuple[int, ...]]]:
    """(name of the last ``nn.Linear`` the forward runs, shape of its input): what :data:`PENULTIMATE`
    taps. None when the model has no ``nn.Linear``. Probed like :func:`layer_table` (eval mode, no
    gradient, modes restored, no hook left)."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return None
    batch = _example_batch(model, example_input, batch_size)
    with FeatureTap(model, [PENULTIMATE]) as tap:
        with eval_probe(model):
            model(batch)
        if tap.penultimate_layer is None:
            return None
        return tap.penultimate_layer, tuple(tap[PENULTIMATE].shape)


def format_layer_table(rows: Sequence[LayerRow]) -> str:
    """Aligned plain-text columns: module, type, output shape, parameters (thousands separated)."""
    header = ("module", "type", "output", "params")
    body = [(row.name, row.type, row.output, f"{row.params:,}") for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(4)]

    def fmt(line: Tuple[str, str, str, str]) -> str:
        return "  ".join([*(cell.ljust(w) for cell, w in zip(line[:3], widths)), line[3].rjust(widths[3])]).rstrip()

    return "\n".join([fmt(header), *(fmt(line) for line in body)])
