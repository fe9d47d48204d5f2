"""Hinton knowledge-distillation loss (Hinton, Vinyals & Dean, 2015).

    kd_loss(s, t, T) = T² · (1/B) Σ_b KL( softmax(t_b/T) ‖ softmax(s_b/T) )
                     = T² · (1/B) Σ_b Σ_k p_bk (log p_bk − log q_bk),
    p = softmax(t/T) (soft labels),  q = softmax(s/T) (soft predictions).

Why each piece:
* both distributions are taken as ``log_softmax`` and compared in log space (what
  ``F.kl_div(..., log_target=True)`` computes), which is exact where ``p`` underflows and never
  takes ``log`` of a probability;
* the KL is summed over classes and averaged over the batch (``'batchmean'``), the mathematical
  KL; ``reduction='mean'`` would also divide by the class count;
* × T² keeps the gradient scale independent of T: ∂/∂s = T·(q − p)/B, and since q − p ≈ (s − t)/(T·K)
  for large T, the product stays O(1) (Hinton et al., §2).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..config import DistillConfig, rule_of
from ..errors import ConfigError
from .registry import SOFT_LOSSES, SoftLoss

Multiple = Callable[[float, int], float]
ClosedForm = Tuple[str, Multiple]  # (kind, factor(T, K))
CLOSED_FORM_KINDS = ("kl", "probability-input")
_TEMPERATURE = rule_of(DistillConfig, "temperature")


def closed_form(kind: str, factor: Multiple) -> Callable[[SoftLoss], SoftLoss]:
    """Mark a coding whose value and gradient :mod:`kdlab.losses.closed_form` computes without
    autograd. Kinds, with p = softmax(t/T), q = softmax(s/T):

    * ``"kl"``: exactly ``factor(T, K) · kd_loss`` (``hinton``, ``extra-T``, ``no-T2``, ``mean-reduction``);
    * ``"probability-input"``: exactly ``factor(T, K) · (1/B) Σ (p·log p − p·q)``, what ``KLDivLoss``
      computes when given probabilities (``softmax-input`` and its no-T² form).

    Tests check every marked coding against its own autograd value and gradient.
    """
    if kind not in CLOSED_FORM_KINDS:
        raise ValueError(f"unknown closed-form kind {kind!r}; choose one of {CLOSED_FORM_KINDS}")

    def mark(fn: SoftLoss) -> SoftLoss:
        fn.closed_form = (kind, factor)  # type: ignore[attr-defined]
        return fn

    return mark


def closed_form_of(fn: SoftLoss) -> Optional[ClosedForm]:
    """(kind, factor) when ``fn`` is marked with :func:`closed_form`, else None."""
    return getattr(fn, "closed_form", None)


def check_temperature(T: float) -> None:
    """``distill.temperature``'s rule for a loss function's ``T`` (a 0-d tensor is read as its number)."""
    _TEMPERATURE.check_argument(T if isinstance(T, (int, float)) else float(T), "temperature T",
                                "set distill.temperature to a positive value")


def check_logits(student_logits: Tensor, teacher_logits: Tensor, T: float) -> None:
    """Raise a one-line :class:`ConfigError` for the mistakes that otherwise fail deep in torch."""
    check_temperature(T)
    if student_logits.shape != teacher_logits.shape:
        if student_logits.dim() == teacher_logits.dim() == 2 and student_logits.shape[0] == teacher_logits.shape[0]:
            raise ConfigError(
                f"class count mismatch: student has {student_logits.shape[1]} outputs, teacher has "
                f"{teacher_logits.shape[1]}; build both models for the same dataset"
            )
        raise ConfigError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; both must be (batch, classes)"
        )


def soft_log_probs(student_logits: Tensor, teacher_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(log softmax(s/T), log softmax(t/T)) after validating inputs; the teacher side is detached."""
    check_logits(student_logits, teacher_logits, T)
    return F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits.detach() / T, dim=1)


def kl_terms(log_q: Tensor, log_p: Tensor) -> Tensor:
    """Elementwise p·(log p − log q), exactly what ``F.kl_div(log_q, log_p, log_target=True)`` sums.

    Written out because ``kl_div`` has no vmap batching rule (vmap would loop over students in
    ``kdlab compare``); tests check it against ``F.kl_div`` itself.
    """
    return log_p.exp() * (log_p - log_q)


def hard_loss(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Batch-mean cross-entropy, = ``F.cross_entropy(s, y)``; written with ``gather`` because
    ``nll_loss`` has no vmap batching rule (``kdlab compare`` vmaps methods over students)."""
    if labels.is_floating_point():  # class probabilities (label smoothing, mixup)
        return F.cross_entropy(student_logits, labels)
    return -F.log_softmax(student_logits, 1).gather(1, labels.unsqueeze(1)).mean()


@SOFT_LOSSES.register("hinton")
@closed_form("kl", lambda T, K: 1.0)
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Batch-mean KL(softmax(t/T) ‖ softmax(s/T)) × T², computed from log-softmax.

    Returns a scalar that is ≥ 0 (0 exactly when the soft distributions agree) with gradient
    T·(softmax(s/T) − softmax(t/T))/B with respect to the student logits. The teacher side is
    detached: distillation never trains the teacher.
    """
    log_q, log_p = soft_log_probs(student_logits, teacher_logits, T)
    return kl_terms(log_q, log_p).sum() * (T * T / student_logits.shape[0])
