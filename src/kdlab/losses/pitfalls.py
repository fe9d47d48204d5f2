"""KD loss codings as they appear in tutorials and blog posts, each with what it gets wrong.

They are registered beside the correct ``hinton`` loss so ``kdlab compare`` can train with them
and ``kdlab doctor`` can recognise them. Notation: q = softmax(s/T), p = softmax(t/T), B = batch,
K = classes. The correct loss has gradient T·(q − p)/B with respect to the student logits s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kd import check_logits, closed_form, kd_loss, kl_terms, soft_log_probs
from .registry import SOFT_LOSSES


def _kl_with_probability_input(s: Tensor, t: Tensor, T: float) -> Tensor:
    # KLDivLoss expects log-probabilities as input; here it is given probabilities q.
    # It then computes (1/B) Σ p·(log p − q): not a divergence, can be negative, and its gradient
    # −(1/B)·p·∂q/∂s vanishes as q saturates instead of pulling q towards p.
    # Written out as F.kl_div(q, p, reduction="batchmean") computes it (xlogy(p, p) − p·q), since
    # kl_div has no vmap batching rule; tests check the equality against F.kl_div itself.
    q = F.softmax(s / T, dim=1)
    p = F.softmax(t.detach() / T, dim=1)
    return (torch.xlogy(p, p) - p * q).sum() / s.shape[0]


@SOFT_LOSSES.register("softmax-input")
@closed_form("probability-input", lambda T, K: T * T)
def softmax_input(s: Tensor, t: Tensor, T: float) -> Tensor:
    """Student *probabilities* fed where KLDivLoss expects log-probabilities, × T².

    Wrong: the value is Σ p·log p − Σ p·q (per sample), which is negative whenever the student
    puts enough mass where the teacher does; the gradient is −T·(p ⊙ q − q·⟨p, q⟩)/B, so it is
    small where q is small — the student barely learns the teacher's dark knowledge.
    """
    check_logits(s, t, T)
    return _kl_with_probability_input(s, t, T) * (T * T)


@SOFT_LOSSES.register("softmax-input-no-T2")
@closed_form("probability-input", lambda T, K: 1.0)
def softmax_input_no_t2(s: Tensor, t: Tensor, T: float) -> Tensor:
    """The ``softmax-input`` mistake without the T² factor (a common CNN-tutorial form).

    Wrong twice: the probability-input error above, and the gradient shrinks by a further 1/T², so
    at T = 7 the soft term is ~50× weaker than intended.
    """
    check_logits(s, t, T)
    return _kl_with_probability_input(s, t, T)


@SOFT_LOSSES.register("extra-T")
@closed_form("kl", lambda T, K: T)
def extra_t(s: Tensor, t: Tensor, T: float) -> Tensor:
    """Correct KL × T², then multiplied by T once more (T³ overall).

    Wrong: the gradient is T²·(q − p)/B, T times too large, so the soft term dominates the hard
    term by a factor T beyond the chosen weights (and the effective learning rate grows with T).
    """
    return kd_loss(s, t, T) * T


@SOFT_LOSSES.register("mean-reduction")
@closed_form("kl", lambda T, K: 1.0 / K)
def mean_reduction(s: Tensor, t: Tensor, T: float) -> Tensor:
    """``reduction='mean'`` instead of ``'batchmean'``: also divides by the class count K.

    Wrong: value and gradient are K times too small (10× on MNIST), silently down-weighting the
    soft term; PyTorch warns about exactly this.
    """
    log_q, log_p = soft_log_probs(s, t, T)
    return kl_terms(log_q, log_p).mean() * (T * T)  # = F.kl_div(log_q, log_p, reduction="mean", log_target=True)


@SOFT_LOSSES.register("no-T2")
@closed_form("kl", lambda T, K: 1.0 / (T * T))
def no_t2(s: Tensor, t: Tensor, T: float) -> Tensor:
    """Correct batch-mean KL without the T² factor.

    Wrong: the gradient is (q − p)/(T·B), T² too small, so raising T silently turns distillation
    off instead of softening the targets.
    """
    log_q, log_p = soft_log_probs(s, t, T)
    return kl_terms(log_q, log_p).sum() / s.shape[0]  # = F.kl_div(..., reduction="batchmean", log_target=True)
