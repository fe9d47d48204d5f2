"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

For a feature map ``f`` of shape ``(B, C, H, W)`` the activation-based attention map is the mean
over channels of ``|f|^p`` (p = 2), flattened per sample and L2-normalised. The loss of one layer
pair is the squared difference of the two maps averaged over batch AND positions, summed over
pairs. This follows the authors' code (github.com/szagoruyko/attention-transfer, ``utils.py``)::

    at(x) = F.normalize(x.pow(2).mean(1).view(x.size(0), -1))
    at_loss(x, y) = (at(x) - at(y)).pow(2).mean()

rather than Eq. (2) of the paper, which writes ``beta/2 * sum_j || q_s/||q_s|| - q_t/||q_t|| ||_p``
(a norm, not its square; torchdistill's ``ATLoss`` documents the same discrepancy).

Weight: the reference trains with ``... + opt.beta * sum(loss_groups)`` and ``--beta 1e+3``
(README), i.e. 1000 multiplies the sum over pairs of the mean squared differences above -- no 1/2
in the code, although the paper writes beta/2 and says beta = 1e3 "divided by the number of
elements in attention map and batch size". mdistiller uses the same 1000 (``AT.LOSS.FEAT_WEIGHT``).
So :data:`REFERENCE_WEIGHT` multiplies :func:`at_loss` directly.

Channel counts of a pair need not match (maps are per position), so AT needs no adapter. When the
spatial sizes differ, the map with more positions is average-pooled to the smaller size BEFORE
normalisation: we pool the channel-mean of ``|f|^p`` (the energy map), not ``f`` itself, so that
positive and negative activations in a window do not cancel (mdistiller pools ``f``; the two
agree whenever sizes already match, the only case the reference code handles).

Numerics: the normalised map is invariant to a positive scale of ``f``, so each sample's ``f`` is
divided by its largest ``|f|`` (detached; an all-zero sample by 1) before the power. The same map
and gradient come out, but in float32 the energy's norm no longer overflows (for ``|f|`` past ~4e9
at p = 2, ~6.5e4 at p = 4, where the map silently became zeros) or falls under the normaliser's
1e-12 floor for tiny activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Batch, Outputs, layer_pair_needs
from .kd import KD
from .registry import register_method

__all__ = ["REFERENCE_WEIGHT", "at_loss", "attention_from_energy", "attention_map", "energy_map", "ATParams", "AttentionTransfer"]

REFERENCE_WEIGHT = 1000.0
"""Weight of :func:`at_loss` in the authors' code (``--beta 1e+3``, multiplying the loss as is)."""


def _check_map(f: Tensor, what: str) -> None:
    if f.dim() != 4:
        raise ConfigError(
            f"attention transfer needs (B, C, H, W) feature maps, {what} has shape {list(f.shape)}; "
            "pick a convolutional layer (see kdlab layers RECIPE)"
        )


def energy_map(f: Tensor, p: float = 2) -> Tensor:
    """``(B, C, H, W) -> (B, H, W)``: the mean over channels of ``|f / max|f||^p`` per sample.

    What the attention map is made of before pooling and normalisation: C times smaller than the
    feature, and all a stored teacher signal needs to keep for AT (the map is scale-invariant, so
    the per-sample scaling changes nothing but the float range; see the module doc).
    """
    _check_map(f, "the feature")
    if p <= 0:
        raise ConfigError(f"attention transfer power p must be positive, got {p}")
    scale = f.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    f = f / torch.where(scale > 0, scale, torch.ones_like(scale))  # the map is scale-invariant; see the module doc
    energy = f.pow(2) if p == 2 else f.abs().pow(p)  # p = 2: the reference expression (of the scaled f)
    return energy.mean(1)


def attention_from_energy(energy: Tensor, size: Optional[Tuple[int, int]] = None) -> Tensor:
    """``(B, H, W) -> (B, H*W)``: the energy map average-pooled to ``size`` (rows, cols) when given, L2-normalised."""
    if size is not None and tuple(energy.shape[-2:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy.unsqueeze(1), size).squeeze(1)
    return F.normalize(energy.reshape(energy.size(0), -1), dim=1)


def attention_map(f: Tensor, p: float = 2, size: Optional[Tuple[int, int]] = None) -> Tensor:
    """``(B, C, H, W) -> (B, H*W)``: L2-normalised mean over channels of ``|f|^p``.

    ``size`` (rows, cols) average-pools the un-normalised map to that spatial size first, used to
    compare maps of different resolutions.
    """
    return attention_from_energy(energy_map(f, p), size)


def at_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    p: float = 2,
    names: Optional[Sequence[Tuple[str, str]]] = None,
    teacher_energy: bool = False,
) -> Tensor:
    """Sum over layer pairs of ``mean((a(student) - a(teacher))^2)``; teachers are detached targets.

    With ``teacher_energy`` the teacher entries are already their :func:`energy_map` ``(B, H, W)``
    (the form every teacher source hands AT: :meth:`AttentionTransfer.teacher_signal`). ``names`` (student layer, teacher layer)
    per pair only improve error messages.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ConfigError(
            f"attention transfer needs the same positive number of student and teacher layers, got "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    total: Optional[Tensor] = None
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        s_name, t_name = names[i] if names and i < len(names) else (f"pair {i} student", f"pair {i} teacher")
        _check_map(fs, f"student {s_name!r}")
        t_energy = ft.detach() if teacher_energy and ft.dim() == 3 else None
        if t_energy is None:
            _check_map(ft, f"teacher {t_name!r}")
        if fs.size(0) != ft.size(0):
            raise ConfigError(
                f"attention transfer: student {s_name!r} output {list(fs.shape)} and teacher {t_name!r} "
                f"output {list(ft.shape)} have different batch sizes; feed both models the same batch"
            )
        th, tw = ft.shape[-2:]
        size = (min(fs.size(2), th), min(fs.size(3), tw))
        t_map = attention_from_energy(t_energy, size) if t_energy is not None else attention_map(ft.detach(), p, size)
        diff = attention_map(fs, p, size) - t_map
        term = diff.pow(2).mean()
        total = term if total is None else total + term
    assert total is not None
    return total


@dataclass
class ATParams:
    """Recipe section ``distill.at``: ``pairs`` student module -> teacher module (4-D outputs),
    ``weight``, ``p``.

    Where the defaults come from: ``weight`` 1000 is the authors' ``--beta 1e+3`` (their README's
    CIFAR commands), also RepDistiller's ``-b 1000`` and mdistiller's ``AT.LOSS.FEAT_WEIGHT``;
    ``p`` 2 is the paper's and the code's (``x.pow(2)``; mdistiller ``AT.P 2``). ``pairs``: none, you
    name them. T and the hard/soft weights are the shared ``distill`` settings (the references
    train AT with CE 1 and no KD term)."""

    pairs: Dict[str, str] = field(default_factory=dict)
    weight: float = REFERENCE_WEIGHT
    p: float = 2.0


class AttentionTransfer(KD):
    """Hinton KD plus attention transfer on each layer pair.

    total = hard_weight·CE + soft_weight·KD(T) + weight·Σ_pairs mean((a_s − a_t)²)
    """

    weight_settings = {**KD.weight_settings, "at": "weight"}
    grid_features = True  # no parameters; at_loss is vmap-compatible (the batched grid trains it)

    def __init__(self, params: ATParams, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__(coding=coding, temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight)
        self.needs = layer_pair_needs("at", params.pairs)
        for key, value in (("weight", params.weight), ("p", params.p)):
            if not (math.isfinite(value) and (value > 0 if key == "p" else value >= 0)):
                raise ConfigError(f"distill.at.{key}: must be a finite number {'> 0' if key == 'p' else '>= 0'}, got {value}")
        self.pairs = dict(params.pairs)
        self.at_weight, self.p = float(params.weight), float(params.p)

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        terms = super().forward(batch, student, teacher)
        assert teacher is not None
        names = list(self.pairs.items())
        teachers = [teacher.features[t] for _, t in names]
        # 3-D: the energy maps of teacher_signal (4-D features never come out of it as 3-D)
        terms["at"] = at_loss([student.features[s] for s, _ in names], teachers, self.p, names,
                              teacher_energy=all(t.dim() == 3 for t in teachers))
        return terms

    def teacher_signal(self, name: str, feature: Tensor) -> Tensor:
        """The teacher's energy map (B, H, W): C times smaller than its feature, the same loss."""
        _check_map(feature, f"teacher {name!r}")  # a 3-D input would later read as an energy map
        return energy_map(feature, self.p)

    def teacher_signal_form(self, name: str) -> str:
        return f"at-energy-p{self.p:g}"

    def term_weights(self) -> Dict[str, float]:
        return {"hard": self.hard_weight, "soft": self.soft_weight, "at": self.at_weight}

    def epoch_info(self) -> Dict[str, float]:
        return {**super().epoch_info(), "at_weight": self.at_weight}


@register_method("at", ATParams)
def build_at(params: ATParams, distill: Any) -> AttentionTransfer:
    """attention transfer: hard + Hinton KD + weight·Σ mean((a_s − a_t)²), a = L2-normalised mean_c |f|^p"""
    return AttentionTransfer(params=params, coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
                             soft_weight=distill.soft_weight)
