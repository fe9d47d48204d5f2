"""Contrastive representation distillation (Tian et al., "Contrastive Representation
Distillation", ICLR 2020), following the authors' code (github.com/HobbitLong/RepDistiller,
``crd/criterion.py`` CRDLoss/ContrastLoss and ``crd/memory.py`` ContrastMemory):

* embeddings: ``normalize(Linear(flatten(f)))`` for student and teacher (``feat_dim`` 128); 4-D
  maps are adaptive-average-pooled to (B, C) first;
* two memory banks (student ``memory_s``, teacher ``memory_t``), N x feat_dim, initialised
  uniform in ±1/sqrt(feat_dim/3); for each sample, K negatives drawn uniformly (with replacement,
  AliasMethod's uniform case) plus the positive = its own index in column 0;
* scores ``exp(<bank row, v>/T) / Z`` with Z = mean(exp(.)) · N estimated ONCE, on the first real
  batch, then kept constant (saved with the state);
* NCE loss per side: ``-(Σ_b log(P_pos/(P_pos + K/N + eps)) + Σ_{b,k} log((K/N)/(P_neg + K/N + eps))) / B``,
  eps = 1e-7; CRD = student-side + teacher-side loss;
* after the loss, each bank row of the batch becomes ``normalize(m·row + (1 − m)·v)`` (m = 0.5).

The student embedding is scored against the TEACHER bank and vice versa, as in the reference.
The teacher feature is detached (the teacher head ``embed_t`` still trains, as in the reference).

Bank size: ``num_samples`` when given, else the training-set size the trainer reports through
:meth:`CRD.setup` (which also seeds the negative sampler with the run's seed). Used without a
trainer and without ``num_samples``, the banks GROW lazily to ``max(index) + 1`` rounded up to a
multiple of 256 (new rows random as at initialisation); N in K/N and in Z is the current bank size.
Z is estimated on the first batch seen after :meth:`build` (the probe never sets Z and never writes
the banks). K is capped by N − 1.

Negatives: drawn uniformly from the whole bank (ContrastMemory's own AliasMethod draw, used when
no ``contrast_idx`` is given). RepDistiller's CIFAR training script instead has its dataset draw
negatives from other classes only (``CIFAR100InstanceSample``); with K ≪ N the difference is a
few same-class negatives per sample.

Default weights (RepDistiller ``train_student.py --distill crd``): CE 1 (``-r 1``), KD 0 or 1
(``-a 0``; the paper's "CRD+KD" uses 1), CRD 0.8 (``-b 0.8``); here CE and KD keep the recipe's
``hard_weight``/``soft_weight`` and CRD has ``distill.crd.weight`` (0.8).

Embeddings: the named layers' outputs, or by default each model's penultimate feature (the input
of its last ``nn.Linear``, :data:`~kdlab.features.PENULTIMATE`), as in the reference (``feat[-1]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import PENULTIMATE
from .base import Batch, Needs, Outputs, RunContext
from .kd import KD
from .registry import register_method

__all__ = ["CRDParams", "CRD", "nce_loss", "contrast_scores", "DENSE_BANK_FACTOR", "momentum_update", "embed_input"]

EPS = 1e-7


def embed_input(f: Tensor) -> Tensor:
    """(B, ...) -> (B, D): 4-D maps adaptive-average-pooled, then flattened."""
    if f.dim() == 4:
        f = F.adaptive_avg_pool2d(f, 1)
    return f.reshape(f.size(0), -1)


def l2norm(x: Tensor) -> Tensor:
    """The reference's Normalize(2): x / ||x||_2 per row."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


DENSE_BANK_FACTOR = 16
"""Score against the whole bank when it holds at most this many times K + 1 rows (see contrast_scores)."""


def contrast_scores(v: Tensor, memory: Tensor, idx: Tensor, T: float, dense: Optional[bool] = None) -> Tensor:
    """exp(<memory[idx], v>/T), shape (B, K+1) (un-normalised).

    Two ways to the same numbers. The reference gathers ``memory[idx]``, a (B, K+1, D) copy: 134 MB per
    call at B = 64, K = 4096, D = 128, and ~250 ms on one core. Multiplying by the whole bank and
    picking the K+1 columns, ``(v @ memoryᵀ).gather(idx)``, does N/(K+1) times the arithmetic but no
    gathered copy: ~87 ms (fp32, the bank copy below included) / ~20 ms (bf16) for MNIST's N = 60,000
    (AMD EPYC, one core, forward + backward).
    ``dense`` (default: N <= DENSE_BANK_FACTOR·(K+1)) picks the whole-bank product; a bank much larger
    than the draw (ImageNet-size N with few negatives) keeps the gather.
    """
    if dense is None:
        dense = memory.size(0) <= DENSE_BANK_FACTOR * idx.size(1)
    if dense:
        # the banks are updated in place after the loss, and this product's backward needs the bank as
        # it was: a copy (N·D, a few ms for MNIST) where a gradient will flow
        bank = memory.clone() if v.requires_grad else memory
        return torch.exp((v @ bank.t()).gather(1, idx) / T)
    w = memory[idx]  # (B, K+1, D)
    return torch.exp(torch.bmm(w, v.unsqueeze(2)).squeeze(2) / T)


def nce_loss(x: Tensor, n_data: int) -> Tensor:
    """ContrastLoss: x (B, K+1) normalised scores, column 0 the positive."""
    B, K = x.size(0), x.size(1) - 1
    mPn = K / float(n_data)
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + mPn + EPS))
    log_d0 = torch.log(mPn / (x[:, 1:] + mPn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / B


@torch.no_grad()
def momentum_update(memory: Tensor, y: Tensor, v: Tensor, momentum: float) -> None:
    """memory[y] <- normalize(momentum·memory[y] + (1 − momentum)·v), in place."""
    pos = memory.index_select(0, y) * momentum + v.detach() * (1 - momentum)
    memory.index_copy_(0, y, l2norm(pos))


@dataclass
class CRDParams:
    """Recipe section ``distill.crd``; see the module docstring."""

    weight: float = 0.8
    feat_dim: int = 128
    negatives: int = 16384
    nce_t: float = 0.07
    momentum: float = 0.5
    student_layer: Optional[str] = None
    teacher_layer: Optional[str] = None
    num_samples: Optional[int] = None


class CRD(KD):
    """total = hard_weight·CE + soft_weight·KD(T) + weight·(NCE_student + NCE_teacher)."""

    lazy = True
    name = "crd"
    per_sample_state = True  # memory banks updated by sample index: refused under torchrun

    def __init__(self, params: CRDParams, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5, seed: int = 0) -> None:
        super().__init__(coding, temperature, hard_weight, soft_weight)
        p = params
        for key, ok, what in (("weight", math.isfinite(p.weight) and p.weight >= 0, "a finite number >= 0"),
                              ("feat_dim", isinstance(p.feat_dim, int) and p.feat_dim >= 1, "an integer >= 1"),
                              ("negatives", isinstance(p.negatives, int) and p.negatives >= 1, "an integer >= 1"),
                              ("nce_t", math.isfinite(p.nce_t) and p.nce_t > 0, "a finite number > 0"),
                              ("momentum", 0 <= p.momentum < 1, "in [0, 1)"),
                              ("num_samples", p.num_samples is None or (isinstance(p.num_samples, int) and p.num_samples >= 2), "an integer >= 2 or null")):
            if not ok:
                raise ConfigError(f"distill.crd.{key}: must be {what}, got {getattr(p, key)!r}")
        for key in ("student_layer", "teacher_layer"):
            value = getattr(p, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"distill.crd.{key}: must be a module name like 'layer4' (omit it for the input of "
                                  f"the last nn.Linear), got {value!r}")
        self.p = p
        self.student_feature, self.teacher_feature = p.student_layer or PENULTIMATE, p.teacher_layer or PENULTIMATE
        self.needs = Needs(teacher_logits=True, student_features=(self.student_feature,),
                           teacher_features=(self.teacher_feature,), indices=True)
        self.crd_weight = float(p.weight)
        self.embed_s: Optional[nn.Linear] = None
        self.embed_t: Optional[nn.Linear] = None
        n = p.num_samples or 0
        self.register_buffer("memory_s", torch.empty(0, p.feat_dim))
        self.register_buffer("memory_t", torch.empty(0, p.feat_dim))
        self.register_buffer("z", torch.tensor([-1.0, -1.0], dtype=torch.float64))  # Z_s, Z_t; < 0: not estimated
        self.generator = torch.Generator().manual_seed(int(seed))
        self._probing = False
        if n:
            self._grow(n)

    # ---- state -------------------------------------------------------------------------------
    def get_extra_state(self) -> Any:
        return {"sampler_rng": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["sampler_rng"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # heads and banks are shape-dependent: create them from the saved shapes first
        ws, wt = state_dict.get(prefix + "embed_s.weight"), state_dict.get(prefix + "embed_t.weight")
        if ws is not None and self.embed_s is None:
            self.embed_s = nn.Linear(ws.size(1), ws.size(0))
            self.embed_t = nn.Linear(wt.size(1), wt.size(0))
        for name in ("memory_s", "memory_t"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def setup(self, ctx: RunContext) -> None:
        """Banks of one row per training sample; the negative sampler seeded with the run's seed."""
        self.generator.manual_seed(int(ctx.seed))
        if self.p.num_samples is None and self.bank_size == 0:
            self._grow(int(ctx.num_samples))

    # ---- parts -------------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        old = self.memory_s.size(0)
        if n <= old:
            return
        if self.p.num_samples is not None and old:
            raise ConfigError(f"crd: sample index {n - 1} out of range for distill.crd.num_samples={self.p.num_samples}")
        stdv = 1.0 / math.sqrt(self.p.feat_dim / 3)
        dev = self.memory_s.device
        for name in ("memory_s", "memory_t"):
            new = torch.rand(n - old, self.p.feat_dim, generator=self.generator).to(dev) * 2 * stdv - stdv
            setattr(self, name, torch.cat([getattr(self, name), new.to(getattr(self, name).dtype)]))

    def build(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> None:
        self._probing = True
        try:
            super().build(batch, student, teacher)
        finally:
            self._probing = False

    @property
    def bank_size(self) -> int:
        return self.memory_s.size(0)

    def crd_loss(self, f_s: Tensor, f_t: Tensor, index: Tensor) -> Tensor:
        """The CRD term for one batch (updates banks and sets Z unless probing)."""
        es_in, et_in = embed_input(f_s), embed_input(f_t.detach())
        if self.embed_s is None:
            self.embed_s = nn.Linear(es_in.size(1), self.p.feat_dim).to(es_in.device)
            self.embed_t = nn.Linear(et_in.size(1), self.p.feat_dim).to(et_in.device)
        assert self.embed_t is not None
        v_s, v_t = l2norm(self.embed_s(es_in)), l2norm(self.embed_t(et_in))
        index = index.to(self.memory_s.device).long()
        if self.p.num_samples is None:
            need = int(index.max()) + 1
            if need > self.bank_size:
                self._grow(-(-need // 256) * 256)
        elif int(index.max()) >= self.bank_size:
            raise ConfigError(f"crd: sample index {int(index.max())} out of range for distill.crd.num_samples={self.p.num_samples}")
        n = self.bank_size
        K = min(self.p.negatives, n - 1)
        B = v_s.size(0)
        idx = torch.randint(0, n, (B, K + 1), generator=self.generator).to(index.device)
        idx[:, 0] = index
        out_s = contrast_scores(v_s, self.memory_t, idx, self.p.nce_t)  # student vs teacher bank
        out_t = contrast_scores(v_t, self.memory_s, idx, self.p.nce_t)  # teacher vs student bank
        z = self.z.tolist()
        zs = z[0] if z[0] > 0 else float(out_s.detach().mean()) * n
        zt = z[1] if z[1] > 0 else float(out_t.detach().mean()) * n
        loss = nce_loss(out_s / zs, n) + nce_loss(out_t / zt, n)
        if not self._probing:
            self.z.copy_(torch.tensor([zs, zt], dtype=torch.float64))
            momentum_update(self.memory_s, index, v_s, self.p.momentum)
            momentum_update(self.memory_t, index, v_t, self.p.momentum)
        return loss

    def forward(self, batch: Batch, student: Outputs, teacher: Optional[Outputs]) -> Dict[str, Tensor]:
        terms = super().forward(batch, student, teacher)
        assert teacher is not None
        if batch.index is None:
            raise ConfigError("crd needs sample indices (batch.index); wrap a user Dataset in kdlab.data.loaders.IndexedDataset")
        terms["crd"] = self.crd_loss(student.features[self.student_feature], teacher.features[self.teacher_feature], batch.index)
        return terms

    def term_weights(self) -> Dict[str, float]:
        return {"hard": self.hard_weight, "soft": self.soft_weight, "crd": self.crd_weight}

    def epoch_info(self) -> Dict[str, float]:
        return {**super().epoch_info(), "crd_weight": self.crd_weight}


@register_method("crd", CRDParams)
def build_crd(params: CRDParams, distill: Any) -> CRD:
    """CRD: hard + Hinton KD + weight·NCE(student/teacher embeddings vs momentum memory banks)"""
    return CRD(params, distill.loss, distill.temperature, distill.hard_weight, distill.soft_weight)
