"""FitNets' hint loss, written out and in the moment form that a 1×1 conv + BatchNorm regressor allows.

The hint is ``mean((BN(conv1x1(s)) − t)²)`` over every element of a ``(B, Ct, H, W)`` teacher map.
Written out, it builds the regressor's ``(B, Ct, H, W)`` output and walks it some ten times forward
and backward (conv, BatchNorm statistics, normalise, difference, square, and their gradients): with a
thin student and a wide teacher layer that costs as much as the student's own step.

Both the conv and the BatchNorm act on each pixel ``p`` linearly, per channel ``c``:
``y_cp = a_c·(w_c·s_p) + b_c`` with ``a_c = γ_c / sqrt(σ_c² + eps)`` and ``b_c = β_c − a_c·μ_c``. The
squared error of a channel over the batch's ``P = B·H·W`` pixels then depends on the student only
through three small moments — the centred student pixels' ``Cs×Cs`` scatter ``S``, their mean, and
the ``Cs×Ct`` cross moment ``X = Σ_p s̃_p t̃_pᵀ`` with the centred teacher — and on the teacher through its
per-channel means and centred sums of squares:

    Σ_p (y_cp − t_cp)² = a_c²·w_cᵀ S w_c − 2·a_c·w_c·X_c + P·δ_c² + Σ_p (t_cp − t̄_c)²,
    δ_c = a_c·(w_c·s̄ − μ_c) + β_c − t̄_c         (= β_c − t̄_c with batch statistics)

(the cross terms vanish because centred pixels sum to 0). One matrix product over the teacher map
(``X``) replaces the written-out chain, and autograd's backward of it is one more: the same loss and
gradients at about a third of the cost. Rounding: the sum is a difference of terms of the size of the
teacher's per-channel variance, so its relative error is about ``eps_dtype · var(t) / loss``
(float32: 1e-5 for a student that explains 99% of the teacher map's variance; the loss's value,
not its gradient, also carries ``eps_dtype · mean(t²) / loss`` from the teacher's sum of squares); the cheap combination
of the small moments runs in float64.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = ["hint_loss", "conv_bn_hint_loss"]


def hint_loss(student_feat_adapted: Tensor, teacher_feat: Tensor) -> Tensor:
    """Mean over all elements of ``(student - teacher)^2``; the teacher is a fixed target (detached).

    Detaching here is a safety net: the teacher never receives gradient even if its feature was
    (wrongly) produced with autograd on.
    """
    if student_feat_adapted.shape != teacher_feat.shape:
        raise ConfigError(
            f"hint loss needs equal shapes, got student {list(student_feat_adapted.shape)} and teacher "
            f"{list(teacher_feat.shape)}; pass the student feature through its adapter first"
        )
    return F.mse_loss(student_feat_adapted, teacher_feat.detach(), reduction="mean")


def conv_bn_hint_loss(student: Tensor, weight: Tensor, teacher: Tensor, bn_weight: Tensor, bn_bias: Tensor,
                      eps: float, mean: Optional[Tensor] = None, var: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    """``mean((BN(conv1x1(student)) − teacher)²)`` in the moment form (module docstring), differentiable
    in ``student``, ``weight`` (``(Ct, Cs)`` or ``(Ct, Cs, 1, 1)``), ``bn_weight`` and ``bn_bias``.

    ``mean``/``var`` None: BatchNorm in training mode (the batch's statistics); given: those (eval mode).
    Returns the loss and the conv output's batch mean and biased variance per channel (detached), from
    which the caller updates running statistics as ``nn.BatchNorm2d`` would.
    """
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0] \
            or student.shape[2:] != teacher.shape[2:]:
        raise ConfigError(
            f"hint loss needs (B, C, H, W) maps of one batch and size, got student {list(student.shape)} and "
            f"teacher {list(teacher.shape)}; pass the student feature through its adapter first"
        )
    b, cs = student.shape[:2]
    ct = teacher.shape[1]
    pixels = b * student.shape[2] * student.shape[3]
    w = weight.reshape(ct, cs)
    s = student.flatten(2)  # (B, Cs, HW)
    t = teacher.detach().to(student.dtype).flatten(2)  # (B, Ct, HW)
    s_mean = s.mean(dim=(0, 2))
    s_c = s - s_mean[None, :, None]  # the student map is the small one: centring it is cheap
    scatter = torch.einsum("bip,bjp->ij", s_c, s_c)  # Cs×Cs
    # the one product over the teacher map: its rows against the centred student pixels and against 1
    # (the teacher's per-channel sums ride along for free)
    ones = torch.ones(b, 1, s.shape[2], dtype=s.dtype, device=s.device)
    prod = torch.bmm(torch.cat([s_c, ones], dim=1), t.transpose(1, 2)).sum(0)  # (Cs+1)×Ct
    with torch.no_grad():
        t_mean = prod[cs] / pixels
        t_sq = torch.linalg.vector_norm(t, dim=2).square().sum(0)  # Σ t² per channel, no (B, Ct, HW) temporary
    # Σ_p s̃_p t̃_pᵀ: the student mean's rounding leaves Σ_p s̃_p a hair off 0, which meets Σ t, not Σ t̃
    cross = prod[:cs] - torch.outer(s_c.sum(dim=(0, 2)), t_mean)
    # the small moments combine in float64 (Ct numbers): the sum below is a difference of large terms
    w64, scatter64, cross64 = w.double(), scatter.double(), cross.double()
    quad = ((w64 @ scatter64) * w64).sum(1)  # w_cᵀ S w_c = P · batch variance of channel c
    batch_mu = w64 @ s_mean.double()
    batch_var = quad / pixels
    mu = batch_mu if mean is None else mean.double()
    v = batch_var if var is None else var.double()
    a = bn_weight.double() / torch.sqrt(v + eps)
    delta = a * (batch_mu - mu) + bn_bias.double() - t_mean.double()
    per_channel = a * a * quad - 2 * a * (w64 * cross64.t()).sum(1) + pixels * delta * delta \
        + (t_sq.double() - pixels * t_mean.double() ** 2)
    loss = (per_channel.sum().clamp_min(0) / (pixels * ct)).to(student.dtype)  # rounding can dip below 0 at a perfect fit
    return loss, batch_mu.detach().to(student.dtype), batch_var.detach().to(student.dtype)
