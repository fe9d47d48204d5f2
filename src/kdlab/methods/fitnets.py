"""FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The paper trains the student's guided layer, through a regressor r, to predict the teacher's hint
layer: ``L_HT = 1/2 * ||u_h(x) - r(v_g(x))||^2`` (a sum over elements). Implementations use the
per-element MEAN instead (mdistiller ``F.mse_loss`` with ``FEAT_WEIGHT`` 100, RepDistiller
``nn.MSELoss()``), so the loss scale does not depend on the layer's size or the batch size and one
weight transfers between layer pairs; we do the same. The regressor is the pair's adapter
(:mod:`kdlab.methods.adapters`), applied before this function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from torch import Tensor

from ..errors import ConfigError
from ..losses.hint import hint_loss
from .adapters import AdapterSet
from .base import Batch, Outputs, layer_pair_needs
from .kd import KD
from .registry import register_method

__all__ = ["hint_loss", "FitNets", "FitNetsParams"]


@dataclass
class FitNetsParams:
    """Recipe section ``distill.fitnets``.

    ``pairs``: student module -> teacher module (names from ``kdlab layers``); ``weight``: the hint
    term's weight; ``hint_epochs``: the paper's hint-only first stage (only the hint term trains),
    then hard + soft + hint.

    Where the defaults come from:

    * ``weight`` 100: RepDistiller (``scripts/run_cifar_distill.sh``: ``--distill hint -a 0 -b 100``)
      and mdistiller (``FITNET.LOSS.FEAT_WEIGHT 100``), both for this mean-reduced MSE on CIFAR-100
      ResNet/WRN features, trained with SGD (lr 0.05, 240 epochs) and CE weight 1. It suits feature
      scales like theirs: on small models it can be nearly all of the loss (the run's ``share_hint``
      and its one-line note say so), and a lower weight is then worth trying.
    * ``pairs``: none, you name them; the references hint the output of the network's second stage
      (``--hint_layer 2`` / ``FITNET.HINT_LAYER 2``).
    * ``hint_epochs`` 0: the references train hint and CE together from the first epoch (their
      ``hint`` is not one of RepDistiller's two-stage methods); the paper's stage-wise training is
      ``hint_epochs > 0``.
    * T, ``hard_weight``, ``soft_weight``: the shared ``distill`` settings (kdlab's choice to keep a
      KD term; the references use CE 1 and no KD term: ``-a 0``).
    """

    pairs: Dict[str, str] = field(default_factory=dict)
    weight: float = 100.0
    hint_epochs: int = 0


class FitNets(KD):
    """FitNets: Hinton KD plus a hint term per layer pair, through adapters built on the first batch.

    total = hard_weight·CE + soft_weight·KD(T) + weight·Σ_pairs MSE(adapter(f_s), f_t)
    """

    lazy = True
    grid_refusal = "its adapters are per-student parameters"
    weight_settings = {**KD.weight_settings, "hint": "weight"}

    def __init__(self, params: FitNetsParams, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5) -> None:
        super().__init__(coding=coding, temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight)
        self.needs = layer_pair_needs("fitnets", params.pairs)
        if not (math.isfinite(params.weight) and params.weight >= 0):
            raise ConfigError(f"distill.fitnets.weight: must be a finite number >= 0, got {params.weight}")
        if params.hint_epochs < 0:
            raise ConfigError(f"distill.fitnets.hint_epochs: must be >= 0, got {params.hint_epochs}")
        self.pairs = dict(params.pairs)
        self.hint_weight = float(params.weight)
        self.hint_epochs = int(params.hint_epochs)
        self.adapters = AdapterSet()

    def build(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> None:
        super().build(batch, student, teacher)
        self.adapters.lock()  # a pair first seen later would have no place in the optimizer

    def hint_only(self, epoch: int) -> bool:
        """True in the paper's first stage (1-based ``epoch`` <= ``hint_epochs``): the hint alone trains."""
        return epoch <= self.hint_epochs

    def warmup_factors(self, epoch: int) -> Dict[str, float]:
        """The hint-only epochs weigh the hard and soft terms 0."""
        return {"hard": 0.0, "soft": 0.0} if self.hint_only(epoch) else {}

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        terms = super().forward(batch, student, teacher)
        assert teacher is not None
        hint = sum(self.adapters.hint(s, t, student.features[s], teacher.features[t]) for s, t in self.pairs.items())
        terms["hint"] = hint  # type: ignore[assignment]
        return terms

    def term_weights(self) -> Dict[str, float]:
        return {"hard": self.hard_weight, "soft": self.soft_weight, "hint": self.hint_weight}

    def epoch_info(self) -> Dict[str, float]:
        w, handed = self.method_weights(), self.epoch_weights
        return {"temperature": self.temperature, "hard_weight": w["hard"], "soft_weight": w["soft"], "hint_weight": w["hint"],
                "stage": 1 if handed is not None and self.hint_only(handed.epoch) else 2}


@register_method("fitnets", FitNetsParams)
def build_fitnets(params: FitNetsParams, distill: Any) -> FitNets:
    """FitNets: hard + Hinton KD + weight·MSE(adapter(student layer), teacher layer) per pair"""
    return FitNets(params=params, coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
                   soft_weight=distill.soft_weight)
