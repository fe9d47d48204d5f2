"""Multi-teacher KD: the soft target is a weighted mixture of several teachers' softened outputs.

For teachers k = 1..M with logits t_k and weights w_k (Σ_k w_k = 1, per run or per sample)

    p_mix = Σ_k w_k · softmax(t_k / T)
    total = hard_weight · CE(s, y) + soft_weight · coding(s, T · log p_mix, T)

``T · log p_mix`` are logits whose softmax at temperature T is exactly the mixture, so every
registered soft-loss coding applies unchanged (``hinton``: T² · KL(p_mix ‖ softmax(s/T))). The log
is taken by ``logsumexp`` over ``log w_k + log_softmax(t_k / T)``, finite even where a teacher's
probability underflows. Weightings (``distill.multi-teacher.weighting``):

* ``equal``: w_k = 1/M (note: the mixture of probabilities, not the mean of logits that a plain
  ``teachers:`` list gives the ``hinton`` method);
* ``fixed``: the given ``weights``, normalised to sum 1;
* ``accuracy``: w_k ∝ each teacher's accuracy on the validation split (measured once, before
  training; a dataset without a validation split is refused: set ``dataset.val_fraction``);
* ``confidence``: per sample, w_k = softmax_k(−H_k / tau) with H_k the entropy of teacher k's
  prediction softmax(t_k) at T = 1: the more certain a teacher is on a sample, the more it counts
  (``tau`` = 1 by default; smaller sharpens the choice).

Teachers come from the recipe's ``teachers:`` list (each a model spec or a checkpoint); their logits
are cached per member when the data are not augmented (:attr:`Needs.teacher_members`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import NON_NEGATIVE, POSITIVE, check_value, ruled
from ..errors import ConfigError
from .base import Batch, Needs, Outputs, RunContext
from .kd import KD
from .registry import register_method

__all__ = ["MultiTeacherParams", "MultiTeacherKD", "mixture_logits", "confidence_weights", "WEIGHTINGS"]

WEIGHTINGS = ("equal", "fixed", "accuracy", "confidence")


def _check_mixture(teacher_logits: Tensor, weights: Tensor) -> None:
    """One-line errors for a layout or weights the mixture would silently misread.

    An (M, B) per-sample tensor with M == B has the shape of (B, M); its sums over dim 1 (the
    teachers, in the expected layout) are what give it away, so the weights must sum to 1 there.
    """
    if teacher_logits.dim() != 3:
        raise ConfigError(f"multi-teacher: teacher logits must be (B, M, K) (batch, teacher, class), got {list(teacher_logits.shape)}")
    B, M = teacher_logits.shape[:2]
    if tuple(weights.shape) not in ((M,), (B, M)):
        raise ConfigError(f"multi-teacher: weights must be (M,) = ({M},) or (B, M) = ({B}, {M}) (batch first, then "
                          f"teacher), got {list(weights.shape)}")
    w = weights.detach()
    if not bool(torch.isfinite(w).all() & (w >= 0).all()):
        raise ConfigError(f"multi-teacher: weights must be finite and >= 0, got {w.tolist() if w.numel() <= 16 else 'some that are not'}")
    sums = w.sum(-1)
    tol = max(1e-4, 8 * torch.finfo(w.dtype).eps) if w.is_floating_point() else 0.0
    if not bool(((sums - 1).abs() <= tol).all()):
        raise ConfigError(f"multi-teacher: weights must sum to 1 over the teachers, got sums from {float(sums.min()):.6g} "
                          f"to {float(sums.max()):.6g}; per-sample weights are laid out (B, M), batch first")


def mixture_logits(teacher_logits: Tensor, weights: Tensor, T: float) -> Tensor:
    """``T · log Σ_k w_k softmax(t_k / T)`` for ``teacher_logits`` (B, M, K) and ``weights`` (M,) or (B, M)
    summing to 1 over the teachers (checked: a one-line ConfigError otherwise)."""
    _check_mixture(teacher_logits, weights)
    w = weights if weights.dim() == 2 else weights.unsqueeze(0).expand(teacher_logits.size(0), -1)
    log_w = torch.log(w.to(teacher_logits.dtype)).unsqueeze(-1)  # log 0 = -inf: that teacher drops out
    return T * torch.logsumexp(log_w + F.log_softmax(teacher_logits / T, dim=-1), dim=1)


def confidence_weights(teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """(B, M) weights softmax_k(−H_k / tau), H_k the entropy of softmax(t_k) per sample."""
    log_p = F.log_softmax(teacher_logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (B, M)
    return F.softmax(-entropy / tau, dim=1)


@dataclass
class MultiTeacherParams:
    """Recipe section ``distill.multi-teacher``; see the module docstring.

    Where the defaults come from: kdlab's choice, not a reference's -- ``weighting`` equal (no
    teacher favoured without evidence) and ``tau`` 1 (the confidence softmax over −entropy unscaled).
    T and the hard/soft weights are the shared ``distill`` settings.
    """

    weighting: str = "equal"
    weights: List[float] = field(default_factory=list)  # for ``fixed``: one per teacher
    tau: float = ruled(1.0, POSITIVE)  # for ``confidence``


class MultiTeacherKD(KD):
    """Hard term plus the chosen coding against the weighted mixture of the teachers."""

    def __init__(self, params: Optional[MultiTeacherParams] = None, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__(coding=coding, temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight)
        p = params if params is not None else MultiTeacherParams()
        if p.weighting not in WEIGHTINGS:
            raise ConfigError(f"distill.multi-teacher.weighting: must be one of {', '.join(WEIGHTINGS)}, got {p.weighting!r}")
        check_value(MultiTeacherParams, "tau", p.tau, "distill.multi-teacher.tau")
        if p.weighting == "fixed":
            if not p.weights or any(not NON_NEGATIVE.holds(w) for w in p.weights) or not sum(p.weights) > 0:
                raise ConfigError("distill.multi-teacher.weights: weighting 'fixed' needs one finite weight >= 0 per "
                                  f"teacher, not all 0, got {p.weights}")
        elif p.weights:
            raise ConfigError(f"distill.multi-teacher.weights: only used with weighting: fixed (weighting is {p.weighting!r})")
        self.p = p
        self.needs = Needs(teacher_logits=True, teacher_members=True)
        # per-teacher weights for equal/fixed/accuracy, kept with the checkpoint (accuracy is measured once)
        self.register_buffer("teacher_weights", torch.empty(0))

    def setup(self, ctx: RunContext) -> None:
        members = getattr(ctx.teacher, "members", None)
        n = len(members) if members is not None else 1
        if self.p.weighting == "fixed" and len(self.p.weights) != n:
            raise ConfigError(f"distill.multi-teacher.weights: {len(self.p.weights)} weights for {n} teachers; give one per teacher")
        if self.teacher_weights.numel() == n or self.p.weighting == "confidence":
            return
        if self.p.weighting == "accuracy":
            if ctx.val_accuracy is None:
                raise ConfigError("distill.multi-teacher.weighting: accuracy needs a validation split; set dataset.val_fraction "
                                  "(e.g. 0.1) or use weighting: fixed")
            w = [ctx.val_accuracy(m) for m in (members if members is not None else [ctx.teacher])]
            if not sum(w) > 0:
                raise ConfigError("distill.multi-teacher.weighting: accuracy: every teacher has validation accuracy 0")
        else:
            w = list(self.p.weights) if self.p.weighting == "fixed" else [1.0] * n
        device = next(ctx.student.parameters()).device
        self.teacher_weights = torch.tensor(w, dtype=torch.float32, device=device) / sum(w)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        saved = state_dict.get(prefix + "teacher_weights")
        if saved is not None:
            self.teacher_weights = torch.empty_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def member_weights(self, teacher_logits: Tensor) -> Tensor:
        """(M,) or per-sample (B, M) weights for teacher logits (B, M, K)."""
        if self.p.weighting == "confidence":
            return confidence_weights(teacher_logits, self.p.tau)
        if self.teacher_weights.numel() == 0:  # used without a trainer: equal or fixed from the parameters
            m = teacher_logits.size(1)
            w = torch.tensor(self.p.weights if self.p.weighting == "fixed" else [1.0] * m, dtype=teacher_logits.dtype,
                             device=teacher_logits.device)
            return w / w.sum()
        if self.teacher_weights.numel() != teacher_logits.size(1):
            raise ConfigError(f"multi-teacher: {self.teacher_weights.numel()} teacher weights for {teacher_logits.size(1)} teachers")
        return self.teacher_weights

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        if teacher is None:
            raise ConfigError("the multi-teacher method needs teachers; list them under teachers: in the recipe")
        t = teacher.logits if teacher.logits.dim() == 3 else teacher.logits.unsqueeze(1)
        mixed = mixture_logits(t, self.member_weights(t), self.temperature)
        return super().forward(batch, student, Outputs(mixed))

    def epoch_info(self) -> Dict[str, float]:
        info = super().epoch_info()
        for k, w in enumerate(self.teacher_weights.tolist()):
            info[f"teacher_weight_{k}"] = w
        return info


@register_method("multi-teacher", MultiTeacherParams)
def build_multi_teacher(params: MultiTeacherParams, distill: Any) -> MultiTeacherKD:
    """Multi-teacher: hard + KD against the mixture of the teachers (equal, fixed, accuracy or confidence weights)"""
    return MultiTeacherKD(params=params, coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
                          soft_weight=distill.soft_weight)
