"""Many MLP students' logits with grouped matmuls instead of ``vmap`` — the batched study's fast path.

``vmap(vmap(functional_call))`` over (seed, variant) has to materialise a copy of each seed's
batch for every variant before the first layer's batched matmul (~2.4 ms a step for 15 students
on MNIST — more than the matmul itself). For a plain chain of ``Linear`` and ``ReLU`` layers the
variants can share the batch instead: the first layer of all V variants of a seed is one matmul
of the (B, in) batch with their weights concatenated to (in, V·hidden); later layers are one
batched matmul over all students. The arithmetic is the same as ``nn.Linear``'s, so results equal
the vmapped (and the one-by-one) computation to float rounding (tested).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..models.mlp import MLP

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


class GroupedMLP:
    """Logits of S × V stacked students (seed-major: student ``s·V + v``) of one linear chain."""

    def __init__(self, layers: List[Layer], seeds: int, variants: int) -> None:
        self.layers, self.S, self.V = layers, seeds, variants

    def _rest(self, params: Dict[str, Tensor], h: Tensor) -> Tensor:
        """Layers after the first, for h of shape (S·V, B, hidden)."""
        M = self.S * self.V
        for wk, bk, relu in self.layers[1:]:
            w = params[wk].view(M, *params[wk].shape[-2:])
            h = torch.baddbmm(params[bk].view(M, 1, -1), h, w.transpose(1, 2)) if bk else torch.bmm(h, w.transpose(1, 2))
            if relu:
                h = h.relu()
        return h

    def _first(self, params: Dict[str, Tensor], x: Tensor, groups: int) -> Tensor:
        """First layer: x (groups, B, in) times each group's students' weights side by side."""
        wk, bk, relu = self.layers[0]
        out, inp = params[wk].shape[-2:]
        w = params[wk].reshape(groups, -1, inp)  # (groups, students·out, in)
        h = torch.baddbmm(params[bk].reshape(groups, 1, -1), x, w.transpose(1, 2)) if bk else torch.bmm(x, w.transpose(1, 2))
        return h.relu() if relu else h  # (groups, B, students·out)

    def per_seed(self, params: Dict[str, Tensor], x: Tensor) -> Tensor:
        """x (S, B, ...) — each seed's own batch — to logits (S, V, B, classes)."""
        S, V, B = self.S, self.V, x.shape[1]
        h = self._first(params, x.reshape(S, B, -1), S)  # (S, B, V·out)
        h = h.view(S, B, V, -1).transpose(1, 2).reshape(S * V, B, -1)
        return self._rest(params, h).view(S, V, B, -1)

    def shared(self, params: Dict[str, Tensor], x: Tensor) -> Tensor:
        """x (N, ...) seen by every student to logits (S, V, N, classes)."""
        S, V, N = self.S, self.V, x.shape[0]
        h = self._first(params, x.reshape(1, N, -1), 1)  # (1, N, S·V·out)
        h = h.view(N, S * V, -1).transpose(0, 1)
        return self._rest(params, h).view(S, V, N, -1)
