"""How kdlab reads a model's logits from whatever its ``forward`` returns: one rule, used everywhere.

Users bring models whose forward returns more than a tensor: Hugging Face models return an
output object with ``.logits`` (or, with ``return_dict=False``, a tuple whose first element is the
logits), others return ``{"logits": ..., "features": ...}``. Rather than asking them to wrap their
model, every place kdlab reads logits (training steps, evaluation, teacher logits and their cache,
export) goes through :func:`logits_of`:

1. a tensor is the logits;
2. an object with a tensor attribute ``logits`` gives it (a Hugging Face ``ModelOutput``);
3. a mapping with a tensor under the key ``"logits"`` gives it;
4. a tuple or list whose first element is a tensor gives that element.

Anything else is a one-line :class:`~kdlab.errors.ConfigError` naming the type and this rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .errors import ConfigError

__all__ = ["LOGITS_RULE", "logits_of"]

#: The rule in one phrase, for error messages and docs.
LOGITS_RULE = ("return a logits tensor (batch, classes), an object or dict with a 'logits' tensor, "
               "or a tuple whose first element is the logits")


def logits_of(output: Any, role: str = "model") -> Tensor:
    """The logits in a model's ``output`` by the module's rule; ``role`` names the model in errors."""
    if isinstance(output, Tensor):
        return output
    attr = getattr(output, "logits", None)
    if isinstance(attr, Tensor):
        return attr
    if isinstance(output, Mapping):
        value = output.get("logits")
        if isinstance(value, Tensor):
            return value
        keys = ", ".join(repr(k) for k in list(output)[:6]) or "none"
        raise ConfigError(f"the {role}'s forward returned {_a(type(output).__name__)} without a 'logits' tensor (keys: {keys}); "
                          f"kdlab reads logits by one rule: {LOGITS_RULE}")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ConfigError(f"the {role}'s forward returned {_describe(output)}, not logits; kdlab reads logits by one rule: {LOGITS_RULE}")


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _describe(output: Any) -> str:
    if isinstance(output, (tuple, list)):
        first = _a(type(output[0]).__name__) if output else "nothing"
        return f"{_a(type(output).__name__)} whose first element is {first}"
    return "None" if output is None else _a(type(output).__name__)
