"""FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The paper trains the student's guided layer, through a regressor r, to predict the teacher's hint
layer: ``L_HT = 1/2 * ||u_h(x) - r(v_g(x))||^2`` (a sum over elements). Implementations use the
per-element MEAN instead (mdistiller ``F.mse_loss`` with ``FEAT_WEIGHT`` 100, RepDistiller
``nn.MSELoss()``), so the loss scale does not depend on the layer's size or the batch size and one
weight transfers between layer pairs; we do the same. The regressor is the pair's adapter
(:mod:`kdlab.methods.adapters`), applied before this function.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = ["hint_loss"]


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
