"""Relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019).

RKD transfers the *structure* of a batch of teacher embeddings rather than the embeddings
themselves, so student and teacher embeddings may have different widths (no adapter is needed).
For a batch of embeddings ``t_1 … t_N`` (rows), following the authors' code
(github.com/lenscloth/RKD, ``metric/loss.py`` ``RkdDistance`` / ``RKdAngle``, ``metric/utils.py``
``pdist``; mdistiller's ``RKD.py`` is the same code):

* **distance** (Eq. 3-5): ``ψ_D(t_i, t_j) = ||t_i − t_j||₂ / μ`` where μ is the mean of the
  non-zero entries of the N×N distance matrix. :func:`pdist` computes the matrix through the Gram
  form ``|a|² + |b|² − 2ab`` clamped at ``eps = 1e-12`` before the square root (``squared=False``),
  then sets the diagonal to 0; so every off-diagonal entry is ≥ 1e-6 and counts in μ (coincident
  points included). The term is ``smooth_l1(ψ_D(student), ψ_D(teacher))`` averaged over all N²
  entries (the diagonal, 0 on both sides, included: ``F.smooth_l1_loss(d, t_d)`` on the matrices).
* **angle** (Eq. 6-7): ``ψ_A(t_i, t_j, t_k) = <e_ij, e_kj>`` with anchor j and
  ``e_ij = (t_i − t_j) / ||t_i − t_j||₂`` (``F.normalize``: a zero vector stays zero). The code
  builds all N³ values (``td = t.unsqueeze(0) − t.unsqueeze(1)``, normalised, ``bmm``), degenerate
  triplets included (they are 0 or 1 on both sides and only dilute the mean), and averages
  ``smooth_l1`` over all N³ entries.
* smooth-L1 is Huber with δ = 1 (``F.smooth_l1_loss`` default ``beta=1``).
* the teacher side is computed under ``torch.no_grad()`` from a detached tensor.

Both terms are unchanged when either side's embeddings are scaled by a positive constant, rotated
or reflected (any orthogonal matrix) or translated: distances scale uniformly and are divided by
their mean, angles do not see scale or position.

Small batches: with N = 2 both terms are 0 by the formulas up to rounding (the one distance
normalises to 1 on both sides; every triplet is degenerate); with N = 1 the reference divides by
the mean of an empty set (NaN). For N < 3 both terms here are an exact, documented **0** (still
connected to the student's graph, zero gradient), so a last batch of one or two samples — and the
trainer's two-sample probe batch — cannot stop a run. Nothing relational is learned from them.

Weights and total. The paper's defaults are λ_D = 25 and λ_A = 50 (mdistiller ``RKD``). Our total is

    total = hard_weight·CE + soft_weight·KD(T) + distance_weight·distance + angle_weight·angle

mdistiller's RKD uses CE + distance + angle only; here the Hinton term follows
``distill.soft_weight`` like every other method, so ``distill.soft_weight: 0`` gives exactly the
mdistiller objective (a weight-0 term is logged but not added).

Embeddings. By default each side's embedding is its *penultimate feature*: the INPUT of the last
``nn.Linear`` the model's forward runs (the classifier of an MLP, a CNN, a ResNet's ``fc``, a
ViT's head) — what mdistiller calls ``pooled_feat``; the trainer's
:class:`~kdlab.features.FeatureTap` records it under the name :data:`~kdlab.features.PENULTIMATE`.
A named layer (``distill.rkd.student_layer`` / ``teacher_layer``) is a module OUTPUT hooked the same
way. Any embedding is made a vector per sample: 4-D maps ``(B, C, H, W)`` are average-pooled to
``(B, C)`` (``adaptive_avg_pool2d`` to 1×1), other shapes are flattened to ``(B, −1)``.

Cost: written out, the angle term holds ``N×N×D`` difference vectors and takes ``N³·D`` multiply-adds
per side, forward and backward. But N rows span at most N − 1 dimensions after centring, so a side
wider than the batch (D > N) is first put in coordinates of its own span (:func:`span_coordinates`,
an orthonormal basis from a QR): the same differences, distances and angles, the same gradients,
at ``N⁴`` (benchmarks/rkd_student.md). The coordinates are computed in float64, so the difference of
two near-equal rows stays as accurate as the explicit one in the input's dtype, and exactly equal
rows keep the explicit form's exact 0 difference (its ``1e-12`` normalisation included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..features import PENULTIMATE
from .base import Batch, Needs, Outputs
from .kd import KD
from .registry import register_method

__all__ = ["pdist", "span_coordinates", "rkd_cosines", "rkd_embedding", "rkd_distance_loss", "rkd_angle_loss",
           "RKDParams", "RKD"]

EPS = 1e-12
"""``pdist``'s clamp of squared distances (the reference's ``eps``)."""


def pdist(e: Tensor, squared: bool = False, eps: float = EPS) -> Tensor:
    """N×N Euclidean distances of the rows of ``e`` (reference ``metric/utils.py``): Gram form
    clamped at ``eps``, square root unless ``squared``, diagonal set to 0."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    n = len(e)
    res[range(n), range(n)] = 0
    return res


def rkd_embedding(f: Tensor, what: str = "embedding") -> Tensor:
    """One vector per sample: ``(B, C, H, W)`` → average-pooled ``(B, C)``; other shapes → ``(B, −1)``."""
    if not isinstance(f, Tensor) or f.dim() < 2:
        shape = list(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ConfigError(f"rkd needs a batch of embeddings (B, D) or maps (B, C, H, W); {what} has shape {shape}")
    if f.dim() == 4:
        return F.adaptive_avg_pool2d(f, 1).flatten(1)
    return f.flatten(1)


def _pair(student: Tensor, teacher: Tensor) -> Tuple[Tensor, Tensor]:
    s, t = rkd_embedding(student, "the student embedding"), rkd_embedding(teacher, "the teacher embedding")
    if s.size(0) != t.size(0):
        raise ConfigError(
            f"rkd: student embeddings {list(s.shape)} and teacher embeddings {list(t.shape)} have different "
            "batch sizes; feed both models the same batch"
        )
    return s, t.detach().to(s.dtype)


def _zero(s: Tensor) -> Tensor:
    """0 that depends on the student (a batch too small for relations: N < 3)."""
    return s.sum() * 0.0


def rkd_distance_loss(student: Tensor, teacher: Tensor, eps: float = EPS) -> Tensor:
    """Distance-wise RKD: ``smooth_l1(d_s / mean(d_s > 0), d_t / mean(d_t > 0))`` over the N×N
    matrices (reference ``RkdDistance``); exactly 0 for batches of fewer than 3."""
    s, t = _pair(student, teacher)
    if s.size(0) < 3:
        return _zero(s)
    with torch.no_grad():
        t_d = pdist(t, squared=False, eps=eps)
        t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(s, squared=False, eps=eps)
    d = d / d[d > 0].mean()
    return F.smooth_l1_loss(d, t_d, reduction="mean")


def _cosines(diff: Tensor) -> Tensor:
    """The N³ cosines ``<e_ij, e_kj>`` from the N×N difference vectors ``diff[j, i] = e_i − e_j``
    (``F.normalize``: a zero difference has the unit vector 0, as in the reference)."""
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)  # [j, i, k] = <e_ij, e_kj>


def _first_equal(e: Tensor) -> Tensor:
    """For each row, the index of the first row exactly equal to it (its own index when unique)."""
    with torch.no_grad():
        _, inverse = torch.unique(e, dim=0, return_inverse=True)
        n = e.size(0)
        first = torch.full((n,), n, dtype=torch.long, device=e.device)
        first.scatter_reduce_(0, inverse, torch.arange(n, device=e.device), reduce="amin")
        return first[inverse]


def _span64(e: Tensor) -> Tuple[Tensor, Tensor]:
    """float64 N×N coordinates of the rows of ``e`` in an orthonormal basis of their centred span
    (differentiable), and :func:`_first_equal`.

    The basis comes from a Householder QR under ``no_grad``; the coordinates are the centred rows
    times it, so the gradient is the coordinates' gradient times the basisᵀ. That is the exact
    gradient: the loss depends only on differences of rows, which lie in the basis' span, and so
    does its gradient. float64 whatever the input: the difference of two near-equal rows is then as
    accurate as the explicit ``e_i − e_j`` in the input's dtype (float32 coordinates would lose it
    to the rounding of the projection, about eps·‖row‖). Exactly equal rows get bitwise equal
    coordinates (the first one's value, each row keeping its own gradient), so their difference is
    the exact 0 the explicit form has.
    """
    first = _first_equal(e)
    x = e.double()
    # the mean is a translation, which changes no difference: no gradient through it (its share is 0,
    # but rounding of an equal pair's 1/eps-sized gradient would leak into every row)
    centred = x - x.mean(dim=0).detach()
    if not (e.requires_grad and torch.is_grad_enabled()):  # the teacher: Rᵀ (centredᵀ = Q R), no Q needed
        with torch.no_grad():
            return torch.linalg.qr(centred.t(), mode="r").R.t()[first], first
    with torch.no_grad():
        basis = torch.linalg.qr(centred.t()).Q  # D×N, orthonormal columns
    coords = centred @ basis
    kept = coords.detach()
    return kept[first] + (coords - kept), first


def span_coordinates(e: Tensor) -> Tuple[Tensor, Tensor]:
    """The rows of ``e`` (N×D) as N×N coordinates in an orthonormal basis of their centred span (in
    ``e``'s dtype, differentiable), and the N×N mask of exactly equal rows (their coordinates are
    equal too).

    Why: every difference ``e_i − e_j`` lies in that span, so distances and angles are unchanged,
    but the angle term's N³ cosines then cost N³·N instead of N³·D, a large saving when D ≫ N (a
    CNN's flattened 16×7×7 student or 256×7×7 teacher penultimate against N = 32 … 128).
    """
    coords, first = _span64(e)
    return coords.to(e.dtype), first.unsqueeze(0) == first.unsqueeze(1)


def rkd_cosines(e: Tensor) -> Tensor:
    """All N³ cosines ``<e_ij, e_kj>`` of the rows of ``e`` (N×D), flattened in the order
    ``[j, i, k]`` of the reference's ``RKdAngle``; a zero difference gives 0.

    When D > N the differences are taken in :func:`span_coordinates` (computed in float64, then
    cast to ``e``'s dtype): the same values and gradients as the explicit N×N×D differences, at
    N⁴ instead of N³·D.
    """
    if e.size(1) > e.size(0):
        coords, _ = _span64(e)
        return _cosines((coords.unsqueeze(0) - coords.unsqueeze(1)).to(e.dtype))
    return _cosines(e.unsqueeze(0) - e.unsqueeze(1))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Angle-wise RKD: ``smooth_l1`` between the cosines ``<e_ij, e_kj>`` of all N³ triplets
    (reference ``RKdAngle``); exactly 0 for batches of fewer than 3 (no non-degenerate triplet)."""
    s, t = _pair(student, teacher)
    if s.size(0) < 3:
        return _zero(s)
    with torch.no_grad():
        t_angle = rkd_cosines(t)
    return F.smooth_l1_loss(rkd_cosines(s), t_angle, reduction="mean")


@dataclass
class RKDParams:
    """Recipe section ``distill.rkd``.

    ``distance_weight`` (25) and ``angle_weight`` (50): the paper's λ_D and λ_A. ``student_layer`` /
    ``teacher_layer``: module names whose outputs are the embeddings (4-D maps are average-pooled);
    omitted: the input of the model's last ``nn.Linear`` (:data:`~kdlab.features.PENULTIMATE`).

    Where the defaults come from: 25 and 50 are RepDistiller's ``RKDLoss(w_d=25, w_a=50)`` and
    mdistiller's ``RKD.DISTANCE_WEIGHT`` / ``ANGLE_WEIGHT``; the penultimate embedding is
    RepDistiller's ``feat[-1]`` and mdistiller's ``pooled_feat``. T and the hard/soft weights are the shared ``distill`` settings
    (mdistiller: CE 1, no KD term; set ``distill.soft_weight: 0`` for its objective).
    """

    distance_weight: float = 25.0
    angle_weight: float = 50.0
    student_layer: Optional[str] = None
    teacher_layer: Optional[str] = None


class RKD(KD):
    """Hinton KD plus RKD's distance and angle terms on one embedding per side.

    total = hard_weight·CE + soft_weight·KD(T) + distance_weight·distance + angle_weight·angle

    A side whose layer is not named uses the input of its model's last ``nn.Linear`` (penultimate).
    """

    # no parameters: the grid trains it, one call per seed (torch.unique and boolean indexing are
    # data-dependent, which vmap cannot batch)
    grid_features, grid_vmap = True, False
    weight_settings = {**KD.weight_settings, "rkd_distance": "distance_weight", "rkd_angle": "angle_weight"}

    def __init__(self, params: Optional[RKDParams] = None, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__(coding=coding, temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight)
        p = params if params is not None else RKDParams()
        for key in ("distance_weight", "angle_weight"):
            value = getattr(p, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"distill.rkd.{key}: must be a finite number >= 0, got {value!r}")
        for key in ("student_layer", "teacher_layer"):
            value = getattr(p, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(
                    f"distill.rkd.{key}: must be a module name like 'layer4' (omit it for the input of the last "
                    f"nn.Linear), got {value!r}"
                )
        self.distance_weight, self.angle_weight = float(p.distance_weight), float(p.angle_weight)
        self.student_layer, self.teacher_layer = p.student_layer, p.teacher_layer
        self.student_feature = self.student_layer or PENULTIMATE
        self.teacher_feature = self.teacher_layer or PENULTIMATE
        self.needs = Needs(teacher_logits=True, student_features=(self.student_feature,),
                           teacher_features=(self.teacher_feature,))

    # ------------------------------------------------------------------ Distiller
    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        terms = super().forward(batch, student, teacher)
        assert teacher is not None
        s, t = student.features[self.student_feature], teacher.features[self.teacher_feature]
        terms["rkd_distance"] = rkd_distance_loss(s, t)
        terms["rkd_angle"] = rkd_angle_loss(s, t)
        return terms

    def term_weights(self) -> Dict[str, float]:
        return {"hard": self.hard_weight, "soft": self.soft_weight,
                "rkd_distance": self.distance_weight, "rkd_angle": self.angle_weight}

    def epoch_info(self) -> Dict[str, float]:
        return {**super().epoch_info(), "distance_weight": self.distance_weight, "angle_weight": self.angle_weight}


@register_method("rkd", RKDParams)
def build_rkd(params: RKDParams, distill: Any) -> RKD:
    """RKD: hard + Hinton KD + 25·distance + 50·angle relations of penultimate (or named) embeddings"""
    return RKD(params=params, coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
               soft_weight=distill.soft_weight)
