"""Plain chains of ``Linear`` and ``ReLU`` layers, and their training step without autograd.

Most of a small MLP's training step on the CPU is per-op overhead, not arithmetic (for the MNIST
student, a small fraction of the step is arithmetic). Two fast paths exploit that a chain's
backward pass is known in closed form: the batched study's grouped matmuls
(:mod:`kdlab.study.grouped_mlp`) and :class:`ChainStep`, which the trainer uses for the
closed-form objective: one forward without a graph, the backward written out as the matmuls
autograd would run, in the same order on the same operands, so the gradients are the same.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

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


class ChainStep:
    """Forward and backward of a :func:`linear_chain` model without building an autograd graph.

    ``step(x, grad_of_logits)`` runs the forward pass, asks ``grad_of_logits(logits)`` for
    ``(values, ∂loss/∂logits)`` and writes every parameter's ``.grad`` (as ``zero_grad(set_to_none)``
    followed by ``backward`` would); it returns ``values``. Each gradient is the product autograd
    computes for ``nn.Linear`` (``addmm`` backward with a transposed weight: ``gᵀ·x``, ``g·W``, ``Σ g``), so a
    run gives the same numbers either way (tested against autograd).
    """

    def __init__(self, model: nn.Module, layers: List[Layer]) -> None:
        params = dict(model.named_parameters())
        self.layers: List[Tuple[nn.Parameter, Optional[nn.Parameter], bool]] = [
            (params[w], params[b] if b else None, relu) for w, b, relu in layers]

    @staticmethod
    def of(model: nn.Module) -> Optional["ChainStep"]:
        """A step for ``model`` when it is a hook-free Linear/ReLU chain whose parameters all train."""
        layers = linear_chain(model)
        if layers is None or not all(p.requires_grad for p in model.parameters()):
            return None
        return ChainStep(model, layers)

    @torch.no_grad()
    def step(self, x: Tensor, grad_of_logits: Callable[[Tensor], Tuple[Tensor, Tensor]]) -> Tensor:
        h = x.flatten(1)
        inputs: List[Tensor] = []
        for weight, bias, relu in self.layers:
            inputs.append(h)
            h = torch.addmm(bias, h, weight.t()) if bias is not None else h.mm(weight.t())
            if relu:
                h = h.relu_()
        values, g = grad_of_logits(h)
        for i in range(len(self.layers) - 1, -1, -1):
            weight, bias, _ = self.layers[i]
            weight.grad = g.t().mm(inputs[i])
            if bias is not None:
                bias.grad = g.sum(0)
            if i:
                g = g.mm(weight)
                if self.layers[i - 1][2]:  # ReLU backward: zero where the ReLU's output was zero
                    g = g.masked_fill_(inputs[i] == 0, 0.0)
        return values
