"""A fused forward/backward for ``hard_weight·CE + soft_weight·hinton`` — the training hot path.

Autograd records ~20 tiny nodes for CE + temperature-scaled KL; for a small student their
bookkeeping costs more than the arithmetic. The objective's gradient has a closed form,

    ∂total/∂s = hard_weight·(softmax(s) − onehot(y))/B + soft_weight·T·(softmax(s/T) − softmax(t/T))/B,

so this Function computes it during the forward pass and backward is one multiply. Values and
gradients equal the unfused composition to float rounding (tested); :class:`DistillationObjective`
uses it only for the ``hinton`` coding.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class FusedHintonObjective(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, y: Tensor, t: Tensor, T: float, hard_w: float, soft_w: float) -> Tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        B = s.shape[0]
        log_q1 = F.log_softmax(s, 1)
        log_qT = F.log_softmax(s / T, 1)
        log_p = F.log_softmax(t / T, 1)
        p = log_p.exp()
        hard = -log_q1.gather(1, y.unsqueeze(1)).sum() / B
        soft = (p * (log_p - log_qT)).sum() * (T * T / B)
        total = hard * hard_w + soft * soft_w
        grad = log_q1.exp_()
        grad.scatter_add_(1, y.unsqueeze(1), grad.new_full((B, 1), -1.0))
        grad.mul_(hard_w / B).add_(log_qT.exp_().sub_(p), alpha=soft_w * T / B)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(hard, soft)
        return total, hard, soft

    @staticmethod
    def backward(ctx, g_total: Tensor, g_hard: Tensor, g_soft: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * g_total, None, None, None, None, None


def fused_hinton_objective(s: Tensor, y: Tensor, t: Tensor, T: float, hard_w: float, soft_w: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(total, hard, soft); only ``total`` carries a gradient (to ``s``; never to the teacher)."""
    return FusedHintonObjective.apply(s, y, t.detach(), float(T), float(hard_w), float(soft_w))
