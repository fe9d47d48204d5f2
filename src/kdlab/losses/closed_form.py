"""The trainer's fast path for ``hard_weight·CE + soft_weight·hinton``: values and ∂/∂logits in closed form.

For a small student, autograd's ~20 tiny nodes for CE + temperature-scaled KL cost more than the
arithmetic, and so does recomputing the teacher's softmax every step. With cached teacher logits
everything that depends only on the teacher and the label is a per-sample constant for a given
(T, weights), so it is tabulated once per epoch and a step reads its rows with the same index it
uses for the images:

    rows   = [ onehot(y) | p | hard_w·onehot(y) + soft_w·T·p | Σ_k p·log p ],   p = softmax(t/T)
    hard   = −Σ_b log softmax(s)_{b,y} / B
    soft   = T² · ( Σ_b Σ_k p·log p − Σ_b Σ_k p·log softmax(s/T) ) / B
    ∂total/∂s = ( hard_w·softmax(s) + soft_w·T·softmax(s/T) − target ) / B

The trainer then calls ``logits.backward(grad)``: the student's graph is used as usual (forward
hooks, clipping, any optimizer), only the loss graph is skipped. Without a teacher the rows are
``[onehot | onehot | 0]`` and the same code gives plain cross-entropy. Values and gradients equal
:class:`~kdlab.losses.DistillationObjective` to float rounding (tested in float64).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .kd import hinton_multiple
from .objective import DistillationObjective


class ClosedFormHinton:
    """Tabulated per-sample constants plus the per-step closed form; see the module docstring.

    ``teacher_logits`` are the whole training set's (cached) logits, or ``None`` to build rows per
    batch with :meth:`batch_rows` (an online teacher) or to train without a teacher
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
        self.params: Optional[Tuple[float, float, float, float]] = None
        self._coef: Dict[Tuple[int, torch.dtype], Tuple[Tensor, Tensor, Tensor]] = {}

    @staticmethod
    def supports(objective: DistillationObjective) -> bool:
        """True when the objective's soft term is a (marked) multiple of the Hinton loss."""
        return hinton_multiple(objective.soft_fn) is not None

    def prepare_for(self, objective: DistillationObjective) -> None:
        """:meth:`prepare` with the objective's current T, weights and Hinton multiple."""
        factor = hinton_multiple(objective.soft_fn) if self.slices == 2 else (lambda T, K: 0.0)
        if factor is None:
            raise ConfigError(f"the '{objective.soft_loss_name}' coding has no closed form; train it through autograd")
        T = objective.temperature
        self.prepare(T, objective.hard_weight, objective.soft_weight, factor(T, self.K))

    def prepare(self, T: float, hard_w: float, soft_w: float, soft_multiple: float = 1.0) -> None:
        """Set (T, weights) for the coming epoch; re-tabulates only when they changed.

        ``soft_multiple`` runs a coding that is exactly ``c·hinton`` (``extra-T``: c = T, ``no-T2``:
        c = 1/T², ``mean-reduction``: c = 1/K; see :func:`~kdlab.losses.kd.hinton_multiple`).
        """
        if not T > 0:
            raise ConfigError(f"temperature T must be > 0, got {T}; set distill.temperature to a positive value")
        params = (float(T), float(hard_w), float(soft_w), float(soft_multiple)) if self.slices == 2 else (1.0, 1.0, 0.0, 0.0)
        if params == self.params:
            return
        self.params, self._coef = params, {}
        if self.slices == 1:
            self.table = self.rows_for(self.labels, None)
        elif self.teacher_logits is not None:
            self.table = self.rows_for(self.labels, self.teacher_logits)

    @torch.no_grad()
    def rows_for(self, labels: Tensor, teacher_logits: Optional[Tensor]) -> Tensor:
        """The per-sample rows for ``labels`` (and the teacher's logits for the same samples)."""
        assert self.params is not None, "call prepare(T, hard_w, soft_w) first"
        T, hard_w, soft_w, multiple = self.params
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
        return torch.cat([onehot, p, onehot * hard_w + p * (soft_w * multiple * T), (p * log_p).sum(1, keepdim=True)], 1)

    def rows(self, idx: Tensor) -> Tensor:
        """Rows of the tabulated samples ``idx`` (one ``index_select``)."""
        assert self.table is not None, "no table: pass teacher_logits (or distill=False) and call prepare()"
        return self.table.index_select(0, idx)

    def _coefficients(self, B: int, dtype: torch.dtype) -> Tuple[Tensor, Tuple[float, ...], Tensor]:
        """Logit scales, gradient weights per slice, and the matrix from the sums to (total, hard, soft)."""
        key = (B, dtype)
        if key not in self._coef:
            assert self.params is not None, "call prepare(T, hard_w, soft_w) first"
            T, hw, sw, c = self.params
            if self.slices == 2:
                scales = [[1.0], [1.0 / T]]
                weights: Tuple[float, ...] = (hw / B, sw * c * T / B)
                to_values = [[-hw / B, -sw * c * T * T / B, sw * c * T * T / B], [-1.0 / B, 0.0, 0.0], [0.0, -c * T * T / B, c * T * T / B]]
            else:
                scales, weights = [[1.0]], (1.0 / B,)
                to_values = [[-1.0 / B, 0.0], [-1.0 / B, 0.0], [float("nan"), float("nan")]]
            self._coef[key] = (torch.tensor(scales, dtype=dtype), weights, torch.tensor(to_values, dtype=dtype).T.contiguous())
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
        scales, weights, to_values = self._coefficients(B, logits.dtype)
        log_probs = F.log_softmax(logits.unsqueeze(-2).mul(scales), -1)  # (..., B, S, K): log softmax(s), log softmax(s/T)
        # narrow/select rather than [..., a:b]: Python-level indexing costs more than the arithmetic here
        sums = rows.narrow(-1, 0, S * K).unflatten(-1, (S, K)).mul(log_probs).sum((-3, -1))  # Σ log q[y], Σ p·log q_T
        values = torch.cat((sums, rows.narrow(-1, (S + 1) * K, 1).sum(-2)), -1).matmul(to_values)
        probs = log_probs.exp_()
        grad = probs.select(-2, 0).mul(weights[0])
        if S == 2:
            grad.add_(probs.select(-2, 1), alpha=weights[1])
        return values, grad.sub_(rows.narrow(-1, S * K, K), alpha=1.0 / B)
