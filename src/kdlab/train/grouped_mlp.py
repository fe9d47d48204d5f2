"""Many MLP students' logits with grouped matmuls instead of ``vmap`` — the batched grid's fast path.

``vmap(vmap(functional_call))`` over (seed, variant) has to materialise a copy of each seed's
batch for every variant before the first layer's batched matmul (for small MLP students that copy
costs more than the matmul itself). For a plain chain of ``Linear`` and ``ReLU`` layers the
variants can share the batch instead: the first layer of all V variants of a seed is one matmul
of their weights stacked to (V·hidden, in) with the seed's batch; later layers are one batched
matmul over all students. The arithmetic is the same as ``nn.Linear``'s, so results equal
the vmapped (and the one-by-one) computation to float rounding (tested).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from ..models.chain import Layer


class GroupedMLP:
    """Logits of S × V stacked students (seed-major: student ``s·V + v``) of one linear chain.

    Activations are kept feature-major, (students, features, batch): each layer is then
    ``W @ h`` — for these shapes the faster matmul orientation on CPU for the forward pass and for
    the weight gradient, whose result comes out contiguous in the parameters' own layout — and
    going from one seed's V·hidden rows to V students of hidden rows is a free view.
    """

    def __init__(self, layers: List[Layer], seeds: int, variants: int) -> None:
        self.layers, self.S, self.V = layers, seeds, variants

    @staticmethod
    def _affine(params: Dict[str, Tensor], layer: Layer, h: Tensor, groups: int) -> Tensor:
        """(groups, rows, in) weights @ h (groups, in, N) + bias, then the layer's ReLU."""
        wk, bk, relu = layer
        w = params[wk].reshape(groups, -1, params[wk].shape[-1])
        h = torch.baddbmm(params[bk].reshape(groups, -1, 1), w, h) if bk else torch.bmm(w, h)
        return h.relu() if relu else h

    def _logits(self, params: Dict[str, Tensor], x: Tensor, groups: int) -> Tensor:
        """x (groups, in, N), the first layer of each group's students side by side."""
        M = self.S * self.V
        h = self._affine(params, self.layers[0], x, groups)  # (groups, students·hidden, N)
        h = h.view(M, -1, h.shape[-1])  # (S·V, hidden, N): a view, no copy
        for layer in self.layers[1:]:
            h = self._affine(params, layer, h, M)
        return h  # (S·V, classes, N)

    def per_seed(self, params: Dict[str, Tensor], x: Tensor) -> Tensor:
        """x (S, B, ...) — each seed's own batch — to logits (S, V, B, classes)."""
        S, V, B = self.S, self.V, x.shape[1]
        logits = self._logits(params, x.reshape(S, B, -1).transpose(1, 2), S)
        return logits.view(S, V, -1, B).transpose(-1, -2)

    def shared(self, params: Dict[str, Tensor], x: Tensor) -> Tensor:
        """x (N, ...) seen by every student to logits (S, V, N, classes)."""
        S, V, N = self.S, self.V, x.shape[0]
        logits = self._logits(params, x.reshape(1, N, -1).transpose(1, 2), 1)
        return logits.view(S, V, -1, N).transpose(-1, -2)
