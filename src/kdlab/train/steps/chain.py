"""The autograd-free step of a Linear/ReLU chain trained with a closed-form objective.

One forward without a graph, the backward written out as the matmuls autograd would run, in the
same order on the same operands, so the gradients are the same (tested against autograd).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...models.chain import Layer, linear_chain


def _masked_relu_backward(grad: Tensor, relu_output: Tensor) -> Tensor:
    return grad.masked_fill_(relu_output == 0, 0.0)


def _native_relu_backward() -> Callable[[Tensor, Tensor], Tensor]:
    """ATen's ``threshold_backward`` (the op autograd runs for ReLU) when this torch build has it.

    One kernel instead of a comparison, a scalar conversion and a fill; the public-API form is the
    fallback (tests check the two agree).
    """
    op = getattr(getattr(torch.ops, "aten", None), "threshold_backward", None)
    if op is None:
        return _masked_relu_backward
    return lambda grad, relu_output: op(grad, relu_output, 0.0)


relu_backward = _native_relu_backward()


class ChainStep:
    """Forward and backward of a :func:`~kdlab.models.chain.linear_chain` model without building an autograd graph.

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
                    g = relu_backward(g, inputs[i])
        return values
