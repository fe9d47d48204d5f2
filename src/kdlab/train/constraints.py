"""Weight constraints applied after every optimizer step (``train.max_norm``).

The max-norm constraint of dropout training (Hinton et al. 2012; Srivastava et al. 2014) bounds
each unit's incoming weight vector: after a step, a row of an ``nn.Linear`` weight whose L2 norm
exceeds ``c`` is scaled back onto the ball of radius ``c`` (``torch.renorm``). It lets dropout
nets train with large learning rates without their weights growing without bound.

The constraint is an optimizer step post-hook, so it follows every kind of step (closed form,
autograd-free chain, autograd with any precision) without the steps knowing of it.
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import nn

from ..errors import ConfigError


def linear_weights(model: nn.Module, trainable: bool = True) -> List[nn.Parameter]:
    """The weight of every ``nn.Linear`` in ``model`` (that trains, with ``trainable``): one row per
    unit, its incoming weights."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear) and (m.weight.requires_grad or not trainable)]


@torch.no_grad()
def apply_max_norm(weights: List[nn.Parameter], max_norm: float) -> None:
    """Scale each row of each weight down to L2 norm ``max_norm`` (rows within the bound are untouched)."""
    for w in weights:
        w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=max_norm))


def attach_max_norm(optimizer: torch.optim.Optimizer, model: nn.Module, max_norm: float) -> Any:
    """Apply :func:`apply_max_norm` to ``model``'s Linear weights after every ``optimizer.step()``;
    returns the hook's handle. A model without a Linear layer is refused (the setting would do nothing)."""
    weights = linear_weights(model)
    if not weights:
        raise ConfigError("train.max_norm constrains nn.Linear weights, and this model has none; remove train.max_norm")
    return optimizer.register_step_post_hook(lambda _opt, _args, _kwargs: apply_max_norm(weights, max_norm))
