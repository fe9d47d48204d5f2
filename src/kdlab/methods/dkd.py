"""Decoupled Knowledge Distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

With p = softmax(z / T), target class t, b = [p_t, 1 - p_t] (binary) and p̂ = the softmax over the
non-target classes only (p̂_i = p_i / (1 - p_t), i ≠ t), the paper's Eq. (1)-(4) give

    KD = KL(b^T || b^S) + (1 - p_t^T) · KL(p̂^T || p̂^S)          (Eq. 4: the weight is the TEACHER's p_t)
    TCKD = KL(b^T || b^S),    NCKD = KL(p̂^T || p̂^S)
    DKD  = α · TCKD + β · NCKD                                    (α = 1, β = 8, T = 4)

each ×T² and averaged over the batch, as in mdistiller's ``dkd_loss``. mdistiller computes NCKD as a
softmax of ``z/T - 1000·[i = t]``; we compute it exactly, as a log-softmax with the target logit
set to −inf (the two agree to float precision whenever the 1000 margin dwarfs the logits; see the
tests). The binary pair is split at p_t = ½, the standard stable form: below it log p_t comes from the
log-softmax and log(1 − p_t) = log1p(−p_t); above it log(1 − p_t) = logsumexp(non-target) −
logsumexp(all) and log p_t = log1p(−(1 − p_t)). Each log near 0 is thus taken from the other one
rather than as a difference of logsumexps, which leaves rounding noise of the size of the logsumexp
itself on a value ~p_t (or ~1 − p_t) and made float32 TCKD negative for small p_t.

Training objective (mdistiller ``DKD.forward_train``)::

    total = hard_weight · CE(s, y) + min(epoch / warmup, 1) · (α · TCKD + β · NCKD)

``epoch`` is 1-based (as in mdistiller's trainer, and kdlab's weight plan, which applies the factor
:meth:`DKD.warmup_factors` declares). T is the recipe's
``distill.temperature`` and the CE weight is ``distill.hard_weight`` (mdistiller's CE_WEIGHT is 1.0;
kdlab's default hard_weight is 0.5, so set ``distill.hard_weight: 1.0`` to reproduce the paper's
setting). ``distill.soft_weight`` is not used. ``warmup`` defaults to mdistiller's CIFAR value 20
(of 240 epochs); for short runs set it to a few epochs, or 0 for no warm-up. DKD reads logits only, so
the trainer caches the teacher's logits when the data are not augmented; there is no closed-form
fast path (the loss runs through autograd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..config import NON_NEGATIVE, DistillConfig, check_value, ruled
from ..errors import ConfigError
from ..losses.kd import check_temperature, hard_loss
from .base import Batch, Distiller, Needs, Outputs
from .registry import register_method

__all__ = ["dkd_terms", "DKD", "DKDParams", "warmup_factor"]


LN2 = math.log(2.0)


def _log1m_exp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x <= −ln 2, accurately; x is clamped there so an unused ``where`` branch keeps a finite gradient."""
    return torch.log1p(-torch.exp(torch.clamp(x, max=-LN2)))


def _binary_logs(log_pt: Tensor, log_rest: Tensor) -> Tuple[Tensor, Tensor]:
    """(log p_t, log(1 − p_t)) from the direct forms, each replaced by log1p(−exp(other)) on its side of ½."""
    small = log_pt < -LN2  # p_t < ½: log p_t is far from 0, log(1 − p_t) ~ −p_t is not
    return (torch.where(small, log_pt, _log1m_exp(log_rest)), torch.where(small, _log1m_exp(log_pt), log_rest))


def _binary_kl(log_pt_t: Tensor, log_rest_t: Tensor, log_pt_s: Tensor, log_rest_s: Tensor) -> Tensor:
    """KL([p, 1-p]_teacher || [p, 1-p]_student) per sample, from log-probabilities (0·log 0 = 0)."""
    out = torch.zeros_like(log_pt_t)
    for lt, ls in ((log_pt_t, log_pt_s), (log_rest_t, log_rest_s)):
        p = lt.exp()
        out = out + torch.where(p > 0, p * (lt - ls), torch.zeros_like(p))
    return out


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float,
              reduction: str = "mean") -> Tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each ×T²; ``reduction`` "mean" (over the batch) or "none" (per sample).

    The teacher is a fixed target (detached). Needs at least two classes and integer targets.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"DKD needs (N, C) student and teacher logits of one shape, got {list(student_logits.shape)} "
                          f"and {list(teacher_logits.shape)}")
    if student_logits.shape[1] < 2:
        raise ConfigError(f"DKD needs at least 2 classes, got {student_logits.shape[1]}")
    if target.is_floating_point() or target.shape != student_logits.shape[:1]:
        raise ConfigError(f"DKD needs one class index per sample (not MixUp/CutMix probabilities), got labels of "
                          f"dtype {target.dtype} and shape {list(target.shape)}")
    check_temperature(temperature)
    T = float(temperature)
    # the target mask by comparison, not an in-place scatter: vmap batches it (the compare grid trains DKD)
    gt = torch.arange(student_logits.shape[1], device=student_logits.device) == target.long().view(-1, 1)

    def parts(z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        z = z / T
        log_all = torch.logsumexp(z, 1)
        masked = z.masked_fill(gt, float("-inf"))
        log_pt, log_rest = _binary_logs(z.gather(1, target.long().view(-1, 1)).squeeze(1) - log_all,  # log p_t
                                        torch.logsumexp(masked, 1) - log_all)  # log(1 - p_t)
        log_hat = torch.log_softmax(masked, 1)  # log p̂ (−inf at the target)
        return log_pt, log_rest, log_hat

    s_pt, s_rest, s_hat = parts(student_logits)
    t_pt, t_rest, t_hat = parts(teacher_logits.detach())
    tckd = _binary_kl(t_pt, t_rest, s_pt, s_rest)
    p_hat = t_hat.exp()
    nckd = torch.where(gt | (p_hat == 0), torch.zeros_like(p_hat), p_hat * (t_hat - s_hat)).sum(1)
    tckd, nckd = tckd * T * T, nckd * T * T
    if reduction == "mean":
        return tckd.mean(), nckd.mean()
    if reduction == "none":
        return tckd, nckd
    raise ConfigError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's ``min(epoch / warmup, 1.0)`` (epoch 1-based); 1 when ``warmup`` is 0."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


@dataclass
class DKDParams:
    """Recipe section ``distill.dkd``: ``alpha`` (TCKD weight, 1), ``beta`` (NCKD weight, 8),
    ``warmup`` (epochs of the linear warm-up of the DKD part, 20; 0 disables it).

    Where the defaults come from: mdistiller's ``DKD`` defaults (``engine/cfg.py``: ``ALPHA 1.0``,
    ``BETA 8.0``, ``T 4.0``, ``WARMUP 20``, ``CE_WEIGHT 1.0``), used as they are by its CIFAR-100
    resnet32x4 → resnet8x4 config; other pairs set other ``BETA`` values (resnet56 → resnet20: 2).
    ``warmup`` 20 is of mdistiller's 240 epochs: for short runs set a few epochs. T is
    ``distill.temperature`` (4 by default, as mdistiller's); the CE weight is ``distill.hard_weight``
    (0.5 by default, kdlab's; mdistiller's 1.0 is ``distill.hard_weight: 1.0``)."""

    alpha: float = ruled(1.0, NON_NEGATIVE)
    beta: float = ruled(8.0, NON_NEGATIVE)
    warmup: int = 20


class DKD(Distiller):
    """DKD: hard_weight·CE + min(epoch/warmup, 1)·(alpha·TCKD + beta·NCKD), T from the recipe."""

    needs = Needs(teacher_logits=True)
    weight_settings = {"hard": "distill.hard_weight", "tckd": "alpha", "nckd": "beta"}

    def __init__(self, params: Optional[DKDParams] = None, temperature: float = 4.0, hard_weight: float = 1.0) -> None:
        super().__init__()
        params = params or DKDParams()
        for name in ("alpha", "beta"):
            check_value(DKDParams, name, getattr(params, name), f"distill.dkd.{name}")
        w = params.warmup
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ConfigError(f"distill.dkd.warmup: must be an integer number of epochs >= 0, got {w}")
        check_value(DistillConfig, "temperature", temperature, "distill.temperature")
        check_value(DistillConfig, "hard_weight", hard_weight, "distill.hard_weight")
        self.alpha, self.beta, self.warmup = float(params.alpha), float(params.beta), int(w)
        self.base_temperature, self.hard_weight = float(temperature), float(hard_weight)

    @property
    def temperature(self) -> float:
        """The T in force (DKD's T is not scheduled: the configured one)."""
        return self.current_temperature()  # type: ignore[return-value]

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.base_temperature = float(value)

    def configured_temperature(self) -> Optional[float]:
        return self.base_temperature

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        if teacher is None:
            raise ConfigError("the DKD method needs a teacher; give --teacher or let kdlab train one")
        tckd, nckd = dkd_terms(student.logits, teacher.logits, batch.y, self.temperature)
        return {"hard": hard_loss(student.logits, batch.y), "tckd": tckd, "nckd": nckd}

    def term_weights(self) -> Dict[str, float]:
        return {"hard": self.hard_weight, "tckd": self.alpha, "nckd": self.beta}

    def warmup_factors(self, epoch: int) -> Dict[str, float]:
        """min(epoch / warmup, 1) on the DKD part (TCKD and NCKD)."""
        f = warmup_factor(epoch, self.warmup)
        return {"tckd": f, "nckd": f}

    def epoch_info(self) -> Dict[str, float]:
        w = self.method_weights()
        factor = self.epoch_weights.factors["tckd"] if self.epoch_weights is not None else 1.0
        return {"temperature": self.temperature, "hard_weight": w["hard"], "tckd_weight": w["tckd"],
                "nckd_weight": w["nckd"], "warmup_factor": factor}


@register_method("dkd", DKDParams)
def build_dkd(params: DKDParams, distill: Any) -> DKD:
    """DKD: hard_weight·CE + warm-up·(alpha·TCKD + beta·NCKD) at distill.temperature"""
    return DKD(params=params, temperature=distill.temperature, hard_weight=distill.hard_weight)
