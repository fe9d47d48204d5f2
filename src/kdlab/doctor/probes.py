"""Probe inputs and the reference forms the doctor compares a user's loss with.

Logits may be (B, K) or carry more axes — (B, L, K) for sequences, (B, K, H, W) for dense
prediction — described by a :class:`Layout` (``--shape B,L,K``). Every reference form is a
per-position quantity summed over classes and *averaged over all positions* (B·L·H·W), so how
the user's loss scales with B, L, H, W relative to it says how it reduces over each axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

DEFAULT_SIZES = {"B": 8, "K": 10, "L": 5, "H": 3, "W": 4}
OTHER_SIZE = 4
AXIS_WORDS = {"L": "tokens", "H": "rows", "W": "columns"}


@dataclass(frozen=True)
class Layout:
    """Axis names of the logits (``B`` batch, ``K`` classes, others are positions) and probe sizes."""

    dims: Tuple[str, ...] = ("B", "K")
    sizes: Dict[str, int] = field(default_factory=lambda: {"B": 8, "K": 10})

    @property
    def class_dim(self) -> int:
        return self.dims.index("K")

    @property
    def positions(self) -> Tuple[str, ...]:
        """Axes other than the batch and the classes."""
        return tuple(d for d in self.dims if d not in ("B", "K"))

    def shape(self, sizes: Dict[str, int]) -> Tuple[int, ...]:
        return tuple(sizes[d] for d in self.dims)

    def label_shape(self, sizes: Dict[str, int]) -> Tuple[int, ...]:
        return tuple(sizes[d] for d in self.dims if d != "K")

    def text(self, sizes: Dict[str, int] = None) -> str:  # type: ignore[assignment]
        sizes = sizes or self.sizes
        return "(" + ", ".join(f"{d}={sizes[d]}" for d in self.dims) + ")"


def parse_layout(text: str) -> Layout:
    """``B,K`` (default), ``B,L,K``, ``B,K,H,W``, … optionally with sizes: ``B,L=12,K=5``."""
    dims, sizes = [], {}
    for token in (x.strip() for x in text.split(",")):
        name, _, size = token.partition("=")
        name = name.strip()
        if not (len(name) == 1 and name.isalpha() and name.isupper()) or name in dims:
            raise ConfigError(f"--shape {text!r}: expected axis letters such as B,L,K (sequence) or B,K,H,W (dense), "
                              f"each once, optionally with a size (L=12)")
        dims.append(name)
        if size:
            try:
                n = int(size)
            except ValueError:
                n = 0
            if not 1 <= n <= 4096:
                raise ConfigError(f"--shape {text!r}: size of {name} must be an integer from 1 to 4096, got {size!r}")
            sizes[name] = n
    if dims.count("B") != 1 or dims.count("K") != 1 or len(dims) > 5:
        raise ConfigError(f"--shape {text!r}: name the batch axis B and the class axis K once each (at most 5 axes), e.g. B,L,K")
    if sizes.get("K", 3) < 3:
        raise ConfigError(f"--shape {text!r}: K must be at least 3 to tell the loss forms apart")
    full = {d: sizes.get(d, DEFAULT_SIZES.get(d, OTHER_SIZE)) for d in dims}
    return Layout(tuple(dims), full)


@dataclass
class Probe:
    s: Tensor   # student logits
    t: Tensor   # teacher logits
    t2: Tensor  # another teacher, to isolate the teacher-dependent part
    y: Tensor   # hard labels


def make_probes(layout: Layout, sizes: Dict[str, int], seed: int, n: int = 3, scale: float = 1.0) -> List[Probe]:
    """Random float64 logits (student spread 2, teacher 3) × ``scale``; the same seed gives the same probes."""
    g = torch.Generator().manual_seed(seed)
    shape, lshape = layout.shape(sizes), layout.label_shape(sizes)
    out = []
    for _ in range(n):
        s = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 * scale
        t = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0 * scale
        t2 = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0 * scale
        y = torch.randint(0, sizes["K"], lshape, generator=g)
        out.append(Probe(s, t, t2, y))
    return out


Form = Callable[[Tensor, Tensor, float, int], Tensor]  # (s, t, T, class_dim) -> scalar


def _positions(s: Tensor, cd: int) -> int:
    return s.numel() // s.shape[cd]


def kl(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)), summed over classes, averaged over positions; no T factor."""
    log_q, log_p = F.log_softmax(s / T, cd), F.log_softmax(t / T, cd)
    return (log_p.exp() * (log_p - log_q)).sum() / _positions(s, cd)


def prob_input(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    """What ``KLDivLoss`` computes when handed probabilities instead of log-probabilities."""
    q, p = F.softmax(s / T, cd), F.softmax(t / T, cd)
    return (torch.xlogy(p, p) - p * q).sum() / _positions(s, cd)


def reversed_kl(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    log_q, log_p = F.log_softmax(s / T, cd), F.log_softmax(t / T, cd)
    return (log_q.exp() * (log_q - log_p)).sum() / _positions(s, cd)


def unsoftened(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    log_q, log_p = F.log_softmax(s, cd), F.log_softmax(t / T, cd)
    return (log_p.exp() * (log_p - log_q)).sum() / _positions(s, cd)


def teacher_entropy(t: Tensor, T: float, cd: int) -> float:
    """H(softmax(t/T)) averaged over positions: soft-target CE − KL, a constant for the student."""
    log_p = F.log_softmax(t / T, cd)
    return float(-(torch.xlogy(log_p.exp(), log_p.exp())).sum() / _positions(t, cd))


def cross_entropy(s: Tensor, y: Tensor, cd: int) -> Tensor:
    """Mean cross-entropy over positions, the hard term the Hinton total uses."""
    return F.cross_entropy(s.movedim(cd, 1), y)


def uniform_ce(s: Tensor, cd: int) -> Tensor:
    """Cross-entropy to the uniform distribution: what label smoothing ε adds (× ε) to the hard term."""
    return -F.log_softmax(s, cd).mean(cd).mean()


FORMS: Dict[str, Tuple[Form, str]] = {
    "KL(teacher || student)": (kl, ""),
    "probabilities as KL input": (prob_input, "student probabilities passed where KLDivLoss expects log-probabilities"),
    "reversed KL": (reversed_kl, "reversed KL direction: KL(student || teacher) instead of KL(teacher || student)"),
    "student not softened": (unsoftened, "student logits not divided by T (only the teacher is softened)"),
}


def mse_logits(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    """Squared distance between the logits (logit matching); T only rescales it."""
    return ((s - t) ** 2).sum() / _positions(s, cd)


def mse_probs(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    return ((F.softmax(s / T, cd) - F.softmax(t / T, cd)) ** 2).sum() / _positions(s, cd)


def jensen_shannon(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    """½ KL(p ‖ m) + ½ KL(q ‖ m) with m the mean of the softened distributions."""
    log_q, log_p = F.log_softmax(s / T, cd), F.log_softmax(t / T, cd)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), 0) - math.log(2.0)
    return 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m)).sum() / _positions(s, cd)


def cosine_probs(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    return (1 - F.cosine_similarity(F.softmax(s / T, cd), F.softmax(t / T, cd), dim=cd)).sum() / _positions(s, cd)


def cosine_logits(s: Tensor, t: Tensor, T: float, cd: int) -> Tensor:
    return (1 - F.cosine_similarity(s, t, dim=cd)).sum() / _positions(s, cd)


# Losses that are not a KL divergence at all: matched only after every KL coding failed; a match is
# named for what it is and compared with Hinton's gradient, never read as a KL pitfall.
NON_KL: Dict[str, Tuple[Form, str]] = {
    "MSE between logits": (mse_logits, "MSE between the student and teacher logits (logit matching)"),
    "MSE between softened probabilities": (mse_probs, "MSE between softmax(s/T) and softmax(t/T)"),
    "Jensen-Shannon divergence": (jensen_shannon, "Jensen-Shannon divergence of softmax(s/T) and softmax(t/T)"),
    "cosine distance of probabilities": (cosine_probs, "cosine distance between softmax(s/T) and softmax(t/T)"),
    "cosine distance of logits": (cosine_logits, "cosine distance between the student and teacher logits"),
}


def value_and_grad(fn: Callable[[Tensor], Tensor], s: Tensor) -> Tuple[float, Tensor]:
    s = s.detach().clone().requires_grad_(True)
    out = fn(s)
    (g,) = torch.autograd.grad(out, s, allow_unused=True) if out.requires_grad else (None,)
    return float(out.detach()), (torch.zeros_like(s) if g is None else g)


def fit(u: Tensor, columns: List[Tensor]) -> Tuple[List[float], float]:
    """Least-squares coefficients with u ≈ Σ c_i·column_i, and the relative residual."""
    A = torch.stack(columns, 1)
    if float(A.norm()) == 0:
        return [0.0] * len(columns), (0.0 if float(u.norm()) == 0 else 1.0)
    coef = torch.linalg.lstsq(A, u.unsqueeze(1)).solution.squeeze(1)
    resid = float((u - A @ coef).norm() / max(float(u.norm()), 1e-300))
    return [float(c) for c in coef], resid


def exponent(r1: float, r2: float, x1: float, x2: float) -> float:
    """k with r ∝ x^k from two points; NaN when the two multiples differ in sign or one is 0."""
    if r1 == 0 or r2 == 0 or (r1 > 0) != (r2 > 0) or x1 == x2:
        return float("nan")
    return math.log(r1 / r2) / math.log(x1 / x2)


def round_exponent(x: float):
    return int(round(x)) if math.isfinite(x) and abs(x - round(x)) < 0.01 else None
