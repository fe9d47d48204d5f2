"""Contrastive representation distillation (Tian et al., "Contrastive Representation
Distillation", ICLR 2020), following the authors' code (github.com/HobbitLong/RepDistiller,
``crd/criterion.py`` CRDLoss/ContrastLoss and ``crd/memory.py`` ContrastMemory):

* embeddings: ``normalize(Linear(flatten(f)))`` for student and teacher (``feat_dim`` 128); 4-D
  maps are adaptive-average-pooled to (B, C) first;
* two memory banks (student ``memory_s``, teacher ``memory_t``), N x feat_dim, initialised
  uniform in ±1/sqrt(feat_dim/3); for each sample, K negatives drawn uniformly (with replacement,
  AliasMethod's uniform case) plus the positive = its own index in column 0;
* scores ``exp(<bank row, v>/T) / Z`` with Z = mean(exp(.)) · N estimated ONCE, on the first real
  batch, then kept constant (saved with the state, float64);
* NCE loss per side: ``-(Σ_b log(P_pos/(P_pos + K/N + eps)) + Σ_{b,k} log((K/N)/(P_neg + K/N + eps))) / B``,
  eps = 1e-7; CRD = student-side + teacher-side loss;
* after the loss, each bank row of the batch becomes ``normalize(m·row + (1 − m)·v)`` (m = 0.5).

The student embedding is scored against the TEACHER bank and vice versa, as in the reference.

Numerics: the loss is computed from the logits ``<bank row, v>/T`` in log space (Z from their
logsumexp, the NCE terms through logaddexp), the same numbers as the reference's exp-then-divide
wherever that is finite; the reference's form overflows float32 (inf/inf = NaN) once e^(1/T) does,
i.e. for T below ~0.0113. Rows are at most sqrt(3) long, so Z <= e^(sqrt(3)/T)·N must fit the float64
buffer: ``nce_t`` below :data:`MIN_NCE_T` is refused. A zero row normalises to zero (not 0/0).

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

__all__ = ["CRDParams", "CRD", "nce_loss", "nce_log_loss", "contrast_scores", "contrast_logits", "MIN_NCE_T", "DENSE_BANK_FACTOR", "momentum_update", "embed_input"]

EPS = 1e-7


def embed_input(f: Tensor) -> Tensor:
    """(B, ...) -> (B, D): 4-D maps adaptive-average-pooled, then flattened."""
    if f.dim() == 4:
        f = F.adaptive_avg_pool2d(f, 1)
    return f.reshape(f.size(0), -1)


NORM_EPS = 1e-12
MIN_NCE_T = 0.005
"""Smallest accepted ``nce_t``: Z <= e^(sqrt(3)/T)·N stays far inside float64 (e^346·N at 0.005)."""


def l2norm(x: Tensor) -> Tensor:
    """The reference's Normalize(2): x / ||x||_2 per row; a zero row stays zero (the norm floored at 1e-12)."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(NORM_EPS)


DENSE_BANK_FACTOR = 16
"""Score against the whole bank when it holds at most this many times K + 1 rows (see contrast_scores)."""


def contrast_logits(v: Tensor, memory: Tensor, idx: Tensor, T: float, dense: Optional[bool] = None) -> Tensor:
    """<memory[idx], v>/T, shape (B, K+1): the log of the un-normalised scores.

    Two ways to the same numbers. The reference gathers ``memory[idx]``, a (B, K+1, D) copy: 134 MB per
    call at B = 64, K = 4096, D = 128. Multiplying by the whole bank and picking the K+1 columns,
    ``(v @ memoryᵀ).gather(idx)``, does N/(K+1) times the arithmetic but no gathered copy, which is
    faster while the bank is not much larger than the draw (MNIST's N = 60,000, forward + backward).
    ``dense`` (default: N <= DENSE_BANK_FACTOR·(K+1)) picks the whole-bank product; a bank much larger
    than the draw (ImageNet-size N with few negatives) keeps the gather.
    """
    if dense is None:
        dense = memory.size(0) <= DENSE_BANK_FACTOR * idx.size(1)
    if dense:
        # the banks are updated in place after the loss, and this product's backward needs the bank as
        # it was: a copy (N·D) where a gradient will flow
        bank = memory.clone() if v.requires_grad else memory
        return (v @ bank.t()).gather(1, idx) / T
    w = memory[idx]  # (B, K+1, D)
    return torch.bmm(w, v.unsqueeze(2)).squeeze(2) / T


def contrast_scores(v: Tensor, memory: Tensor, idx: Tensor, T: float, dense: Optional[bool] = None) -> Tensor:
    """exp(<memory[idx], v>/T), shape (B, K+1) (un-normalised; overflows float32 for small T, see
    :func:`contrast_logits`, which the loss uses)."""
    return torch.exp(contrast_logits(v, memory, idx, T, dense))


def nce_log_loss(log_x: Tensor, n_data: int) -> Tensor:
    """ContrastLoss from log_x = log of the (B, K+1) normalised scores, column 0 the positive.

    log(x/(x + c)) = log x − logaddexp(log x, log c) and log(c'/(x + c)) = log c' − logaddexp(log x, log c),
    c = K/N + eps, c' = K/N: finite for any finite log x.
    """
    B, K = log_x.size(0), log_x.size(1) - 1
    mPn = K / float(n_data)
    log_c = log_x.new_tensor(math.log(mPn + EPS))
    log_d1 = log_x[:, 0] - torch.logaddexp(log_x[:, 0], log_c)
    log_d0 = math.log(mPn) - torch.logaddexp(log_x[:, 1:], log_c)
    return -(log_d1.sum() + log_d0.sum()) / B


def nce_loss(x: Tensor, n_data: int) -> Tensor:
    """ContrastLoss: x (B, K+1) normalised scores, column 0 the positive (:func:`nce_log_loss` of log x)."""
    return nce_log_loss(x.log(), n_data)


def log_normaliser(logits: Tensor, n_data: int) -> float:
    """log Z, Z = mean(exp(logits))·N, in float64 from a logsumexp (no overflow)."""
    flat = logits.detach().double().reshape(-1)
    return float(torch.logsumexp(flat, 0)) - math.log(flat.numel()) + math.log(n_data)


@torch.no_grad()
def momentum_update(memory: Tensor, y: Tensor, v: Tensor, momentum: float) -> None:
    """memory[y] <- normalize(momentum·memory[y] + (1 − momentum)·v), in place."""
    pos = memory.index_select(0, y) * momentum + v.detach() * (1 - momentum)
    memory.index_copy_(0, y, l2norm(pos))


@dataclass
class CRDParams:
    """Recipe section ``distill.crd``; see the module docstring.

    Where the defaults come from: RepDistiller's ``train_student.py`` (CIFAR-100) -- ``feat_dim``
    128 (``--feat_dim``), ``negatives`` 16384 (``--nce_k``), ``nce_t`` 0.07 (``--nce_t``),
    ``momentum`` 0.5 (``--nce_m``), the embeddings from the penultimate feature (``feat[-1]``) --
    and ``weight`` 0.8 from its ``run_cifar_distill.sh`` (``--distill crd -b 0.8``); mdistiller's
    ``CRD`` section has the same values. ``num_samples``: the training-set size (kdlab's choice:
    one bank row per sample, as the reference's ``n_data``). T and the hard/soft weights are the
    shared ``distill`` settings (reference: CE 1 and KD 0, or KD 1 for "CRD+KD").
    """

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
    grid_refusal = "its embedding heads are per-student parameters and its memory bank per-student state"
    method_name = "crd"  # also when built directly: messages (torchrun's refusal) name it
    weight_settings = {**KD.weight_settings, "crd": "weight"}

    def __init__(self, params: CRDParams, coding: str = "hinton", temperature: float = 4.0,
                 hard_weight: float = 0.5, soft_weight: float = 0.5, seed: int = 0) -> None:
        super().__init__(coding=coding, temperature=temperature, hard_weight=hard_weight, soft_weight=soft_weight)
        p = params
        for key, ok, what in (("weight", math.isfinite(p.weight) and p.weight >= 0, "a finite number >= 0"),
                              ("feat_dim", isinstance(p.feat_dim, int) and p.feat_dim >= 1, "an integer >= 1"),
                              ("negatives", isinstance(p.negatives, int) and p.negatives >= 1, "an integer >= 1"),
                              ("nce_t", math.isfinite(p.nce_t) and p.nce_t >= MIN_NCE_T,
                               f"a finite number >= {MIN_NCE_T} (smaller ones overflow the NCE normaliser; the paper uses 0.07)"),
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
                           teacher_features=(self.teacher_feature,), indices=True,
                           per_sample_state=True)  # memory banks updated by sample index: refused under torchrun
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
        out_s = contrast_logits(v_s, self.memory_t, idx, self.p.nce_t)  # student vs teacher bank
        out_t = contrast_logits(v_t, self.memory_s, idx, self.p.nce_t)  # teacher vs student bank
        z = self.z.tolist()
        log_zs = math.log(z[0]) if z[0] > 0 else log_normaliser(out_s, n)
        log_zt = math.log(z[1]) if z[1] > 0 else log_normaliser(out_t, n)
        loss = nce_log_loss(out_s - log_zs, n) + nce_log_loss(out_t - log_zt, n)
        if not self._probing:
            self.z.copy_(torch.tensor([log_zs, log_zt], dtype=torch.float64).exp())
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
    return CRD(params=params, coding=distill.loss, temperature=distill.temperature, hard_weight=distill.hard_weight,
               soft_weight=distill.soft_weight)
