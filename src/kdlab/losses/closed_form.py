"""The trainer's fast path for ``hard_weight·CE + soft_weight·soft``: values and ∂/∂logits in closed form.

For a small student, autograd's ~20 tiny nodes for CE + a temperature-scaled soft term cost more
than the arithmetic, and so does recomputing the teacher's softmax every step. With cached teacher
logits everything that depends only on the teacher and the label is a per-sample constant for a
given (T, weights), so it is tabulated once per epoch and a step reads its rows with the same index
it uses for the images. With p = softmax(t/T), q₁ = softmax(s), q = softmax(s/T):

    rows = [ onehot(y) | p | target | Σ_k p·log p ]
    hard = −Σ_b log q₁[y] / B

    "kl" codings (c·hinton: hinton c=1, extra-T c=T, no-T2 c=1/T², mean-reduction c=1/K)
        target = hard_w·onehot + soft_w·c·T·p
        soft   = c·T²·( Σ p·log p − Σ p·log q ) / B
        ∂total/∂s = ( hard_w·q₁ + soft_w·c·T·q − target ) / B

    "probability-input" codings (KLDivLoss given q instead of log q; softmax-input c=T², no-T2 form c=1)
        target = hard_w·onehot
        soft   = c·( Σ p·log p − Σ p·q ) / B
        ∂total/∂s = ( hard_w·q₁ − target − soft_w·(c/T)·q ⊙ (p − ⟨p, q⟩) ) / B

The trainer then calls ``logits.backward(grad)``: the student's graph is used as usual (forward
hooks, clipping, any optimizer), only the loss graph is skipped. Without a teacher the rows are
``[onehot | onehot | 0]`` and the same code gives plain cross-entropy. Which coding has which form
is declared where the coding is registered (:func:`kdlab.losses.kd.closed_form`). Values and
gradients equal the autograd forward of :class:`~kdlab.methods.KD`/:class:`~kdlab.methods.CE` to float
rounding (tested in float64).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .kd import CLOSED_FORM_KINDS, check_temperature, closed_form_of

_Coefficients = Tuple[Tensor, Tuple[float, ...], Tensor]


class ClosedFormObjective:
    """Tabulated per-sample constants plus the per-step closed form; see the module docstring.

    ``teacher_logits`` are the whole training set's (cached) logits, or ``None`` to build rows per
    batch with :meth:`rows_for` (an online teacher) or to train without a teacher
    (``distill=False``).
    """

    def __init__(self, labels: Tensor, num_classes: int, teacher_logits: Optional[Tensor] = None, distill: bool = True) -> None:
        if labels.is_floating_point():
            raise ConfigError("the closed-form objective needs integer class labels, not class probabilities")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ConfigError(
                f"labels range over [{int(labels.min())}, {int(labels.max())}] but the model has {num_classes} "
                "classes; build the models for this dataset"
            )
        if teacher_logits is not None and tuple(teacher_logits.shape) != (len(labels), num_classes):
            raise ConfigError(
                f"cached teacher logits have shape {tuple(teacher_logits.shape)}, expected ({len(labels)}, "
                f"{num_classes}); teacher and student must be built for the same dataset"
            )
        self.labels = labels
        self.K = int(num_classes)
        self.slices = 2 if distill else 1
        self.teacher_logits = teacher_logits
        self.table: Optional[Tensor] = None
        self.kind = "kl"
        self.params: Optional[Tuple[float, float, float, float]] = None
        self._coef: Dict[Tuple[int, torch.dtype, torch.device], _Coefficients] = {}

    def prepare_for(self, method: Any) -> None:
        """:meth:`prepare` with the method's current T, weights (:meth:`~kdlab.methods.Distiller.weights`)
        and its coding's closed form (``method.soft_fn``/``soft_loss_name``, as :class:`~kdlab.methods.KD` has)."""
        if self.slices == 1:
            return self.prepare(1.0, 1.0, 0.0)
        form = closed_form_of(method.soft_fn)
        if form is None:
            raise ConfigError(f"the '{method.soft_loss_name}' coding has no closed form; train it through autograd")
        kind, factor = form
        T = method.temperature
        weights = method.weights()
        self.prepare(T, weights["hard"], weights["soft"], factor(T, self.K), kind)

    def prepare(self, T: float, hard_w: float, soft_w: float, factor: float = 1.0, kind: str = "kl") -> None:
        """Set (T, weights, the coding's factor c and kind) for the coming epoch; re-tabulates only on change."""
        check_temperature(T)
        if kind not in CLOSED_FORM_KINDS:
            raise ValueError(f"unknown closed-form kind {kind!r}; choose one of {CLOSED_FORM_KINDS}")
        params = (float(T), float(hard_w), float(soft_w), float(factor)) if self.slices == 2 else (1.0, 1.0, 0.0, 0.0)
        if (params, kind) == (self.params, self.kind):
            return
        self.params, self.kind, self._coef = params, kind, {}
        if self.slices == 1:
            self.table = self.rows_for(self.labels, None)
        elif self.teacher_logits is not None:
            self.table = self.rows_for(self.labels, self.teacher_logits)

    @torch.no_grad()
    def rows_for(self, labels: Tensor, teacher_logits: Optional[Tensor]) -> Tensor:
        """The per-sample rows for ``labels`` (and the teacher's logits for the same samples)."""
        assert self.params is not None, "call prepare(T, hard_w, soft_w) first"
        T, hard_w, soft_w, c = self.params
        dtype = teacher_logits.dtype if teacher_logits is not None else torch.float32
        onehot = F.one_hot(labels, self.K).to(dtype)
        if teacher_logits is None:
            return torch.cat([onehot, onehot, onehot.new_zeros(len(labels), 1)], 1)
        if teacher_logits.shape[1] != self.K:
            raise ConfigError(
                f"class count mismatch: student has {self.K} outputs, teacher has {teacher_logits.shape[1]}; "
                "build both models for the same dataset"
            )
        log_p = F.log_softmax(teacher_logits / T, 1)
        p = log_p.exp()
        target = onehot * hard_w + (p * (soft_w * c * T) if self.kind == "kl" else 0.0)
        return torch.cat([onehot, p, target, (p * log_p).sum(1, keepdim=True)], 1)

    def rows(self, idx: Tensor) -> Tensor:
        """Rows of the tabulated samples ``idx`` (one ``index_select``)."""
        assert self.table is not None, "no table: pass teacher_logits (or distill=False) and call prepare()"
        return self.table.index_select(0, idx)

    def _coefficients(self, B: int, dtype: torch.dtype, device: torch.device) -> _Coefficients:
        """Logit scales, gradient weights per slice, and the matrix from the sums to (total, hard, soft)."""
        key = (B, dtype, device)
        if key not in self._coef:
            assert self.params is not None, "call prepare(T, hard_w, soft_w) first"
            T, hw, sw, c = self.params
            if self.slices == 2:
                scales = [[1.0], [1.0 / T]]
                kl = self.kind == "kl"
                k = c * T * T if kl else c  # soft = k·(Σ p log p − cross)/B
                weights: Tuple[float, ...] = (hw / B, sw * c * T / B if kl else -sw * c / (T * B))
                to_values = [[-hw / B, -sw * k / B, sw * k / B], [-1.0 / B, 0.0, 0.0], [0.0, -k / B, k / B]]
            else:
                scales, weights = [[1.0]], (1.0 / B,)
                to_values = [[-1.0 / B, 0.0], [-1.0 / B, 0.0], [float("nan"), float("nan")]]
            self._coef[key] = (torch.tensor(scales, dtype=dtype, device=device), weights,
                               torch.tensor(to_values, dtype=dtype, device=device).T.contiguous())
        return self._coef[key]

    @torch.no_grad()
    def __call__(self, logits: Tensor, rows: Tensor) -> Tuple[Tensor, Tensor]:
        """(values, grad) for logits (..., B, K) and their rows (..., B, R), any leading dims (one
        batch per leading index, e.g. one per seed in ``kdlab compare``).

        ``values[..., :]`` = [total, hard, soft] (soft NaN without a teacher); ``grad`` = ∂total/∂logits.
        """
        if logits.dim() < 2 or logits.shape[-1] != self.K:
            raise ConfigError(
                f"class count mismatch: the model outputs {tuple(logits.shape)} but the data have {self.K} classes; "
                "build the model for this dataset"
            )
        B, K, S = logits.shape[-2], self.K, self.slices
        rows = rows.to(logits.dtype)
        scales, weights, to_values = self._coefficients(B, logits.dtype, logits.device)
        # narrow/select rather than [..., a:b]: Python-level indexing costs more than the arithmetic here
        log_probs = F.log_softmax(logits.unsqueeze(-2).mul(scales), -1)  # (..., B, S, K): log q₁, log q
        negent = rows.narrow(-1, (S + 1) * K, 1).sum(-2)
        target = rows.narrow(-1, S * K, K)
        if S == 1 or self.kind == "kl":
            sums = rows.narrow(-1, 0, S * K).unflatten(-1, (S, K)).mul(log_probs).sum((-3, -1))  # Σ log q₁[y], Σ p·log q
            probs = log_probs.exp_()
            grad = probs.select(-2, 0).mul(weights[0])
            if S == 2:
                grad.add_(probs.select(-2, 1), alpha=weights[1])
        else:  # probability input: the cross term is Σ p·q, its gradient q ⊙ (p − ⟨p, q⟩)/T
            hard_sum = rows.narrow(-1, 0, K).mul(log_probs.select(-2, 0)).sum((-2, -1)).unsqueeze(-1)
            probs = log_probs.exp_()
            q, p = probs.select(-2, 1), rows.narrow(-1, K, K)
            pq = p.mul(q).sum(-1, keepdim=True)  # (..., B, 1): ⟨p, q⟩ per sample
            sums = torch.cat((hard_sum, pq.sum(-2)), -1)
            grad = probs.select(-2, 0).mul(weights[0]).add_(q.mul(p.sub(pq)), alpha=weights[1])
        values = torch.cat((sums, negent), -1).matmul(to_values)
        return values, grad.sub_(target, alpha=1.0 / B)
