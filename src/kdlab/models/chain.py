"""Plain chains of ``Linear`` and ``ReLU`` layers: the structure two training steps exploit.

Most of a small MLP's training step on the CPU is per-op overhead, not arithmetic. A chain's
backward pass is known in closed form, so two steps of :mod:`kdlab.train.steps` skip autograd for
it: the batched grid's grouped matmuls and the autograd-free chain step.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from .mlp import MLP

Layer = Tuple[str, Optional[str], bool]  # (weight key, bias key, ReLU after)


def linear_chain(model: nn.Module) -> Optional[List[Layer]]:
    """The model's layers when it is a hook-free chain of Linear/ReLU (after a flatten), else None."""
    if isinstance(model, MLP):
        seq, prefix = model.net, "net."
    elif isinstance(model, nn.Sequential):
        seq, prefix = model, ""
    else:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None  # a user's hook must see the real modules: use the vmapped path
    layers: List[Layer] = []
    for i, (name, m) in enumerate(seq.named_children()):
        if isinstance(m, nn.Linear):
            layers.append((f"{prefix}{name}.weight", f"{prefix}{name}.bias" if m.bias is not None else None, False))
        elif isinstance(m, nn.ReLU) and layers and not layers[-1][2]:
            layers[-1] = (layers[-1][0], layers[-1][1], True)
        elif isinstance(m, nn.Flatten) and i == 0 and m.start_dim == 1 and m.end_dim == -1:
            continue
        else:
            return None
    return layers or None
