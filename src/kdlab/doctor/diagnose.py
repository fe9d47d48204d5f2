"""``kdlab doctor``: is this KD loss function right, and if not, which known mistake is it?

Method (all on random float64 probe logits, so nothing depends on a dataset):

1. If the function takes labels, its hard term is separated out: for three label sets the output
   must be ``a·CE(s, y) + soft``; ``a`` is the effective hard weight.
2. The soft part (value and gradient w.r.t. the student logits, over three probes) is matched
   against the *shapes* of known codings — KL(p‖q), probabilities fed as KL input, reversed
   KL(q‖p), student logits not divided by T — by least squares: a shape matches when the soft
   part is a constant multiple r of it (relative residual < 1e-5).
3. The multiple is decomposed as r = c · T^k · K^m · B^b by re-probing with another temperature
   (when T is an argument), class count K and batch size B: k = 2 is the correct T², m = −1 is
   ``reduction='mean'``, b = 1 is a sum over the batch; c is the effective soft weight.
4. Finally the teacher logits are given ``requires_grad`` to see whether gradient reaches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .calling import Adapted, adapt

Shape = Callable[[Tensor, Tensor, float], Tensor]


def _kl(s: Tensor, t: Tensor, T: float) -> Tensor:
    log_q, log_p = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    return (log_p.exp() * (log_p - log_q)).sum() / s.shape[0]


def _prob_input(s: Tensor, t: Tensor, T: float) -> Tensor:
    q, p = F.softmax(s / T, 1), F.softmax(t / T, 1)
    return (torch.xlogy(p, p) - p * q).sum() / s.shape[0]


def _reversed(s: Tensor, t: Tensor, T: float) -> Tensor:
    log_q, log_p = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    return (log_q.exp() * (log_q - log_p)).sum() / s.shape[0]


def _unsoftened(s: Tensor, t: Tensor, T: float) -> Tensor:
    log_q, log_p = F.log_softmax(s, 1), F.log_softmax(t / T, 1)
    return (log_p.exp() * (log_p - log_q)).sum() / s.shape[0]


SHAPES: Dict[str, Tuple[Shape, Optional[str]]] = {
    "KL(teacher || student)": (_kl, None),
    "probabilities as KL input": (_prob_input, "student probabilities passed where KLDivLoss expects log-probabilities"),
    "reversed KL": (_reversed, "reversed KL direction: KL(student || teacher) instead of KL(teacher || student)"),
    "student not softened": (_unsoftened, "student logits not divided by T (only the teacher is softened)"),
}
# (shape, k, m, b) of each registered coding; c (the soft weight) is not part of the signature.
REGISTERED = {
    ("KL(teacher || student)", 2, 0, 0): "hinton",
    ("probabilities as KL input", 2, 0, 0): "softmax-input",
    ("probabilities as KL input", 0, 0, 0): "softmax-input-no-T2",
    ("KL(teacher || student)", 3, 0, 0): "extra-T",
    ("KL(teacher || student)", 2, -1, 0): "mean-reduction",
    ("KL(teacher || student)", 0, 0, 0): "no-T2",
}
TOL = 1e-5


@dataclass
class Diagnosis:
    correct: bool
    matches: Optional[str]  # registered coding with the same signature, if any
    findings: List[str]
    evidence: List[str]
    call: str
    warnings: List[str] = field(default_factory=list)
    shape: Optional[str] = None
    exponents: Dict[str, Any] = field(default_factory=dict)
    soft_weight: Optional[float] = None
    hard_weight: Optional[float] = None
    teacher_grad: bool = False

    def lines(self) -> List[str]:
        head = "CORRECT: matches the Hinton loss" if self.correct else "PROBLEM: " + "; ".join(self.findings)
        out = [f"called as {self.call}", head] + [f"WARNING: {w}" for w in self.warnings]
        if self.matches:
            out.append(f"same as kdlab's registered coding '{self.matches}' (see `kdlab losses`)")
        return out + ["evidence:"] + [f"  {e}" for e in self.evidence]


def _probes(K: int, B: int, seed: int, n: int = 3) -> List[Tuple[Tensor, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        s = torch.randn(B, K, generator=g, dtype=torch.float64) * 2.0
        t = torch.randn(B, K, generator=g, dtype=torch.float64) * 3.0
        y = torch.randint(0, K, (B,), generator=g)
        out.append((s, t, y))
    return out


def _vec(value: float, grad: Tensor) -> Tensor:
    """A probe's value and gradient as one vector, so shapes are fitted on both at once."""
    return torch.cat([torch.tensor([value], dtype=torch.float64), grad.flatten()])


def _value_and_grad(fn: Callable[[Tensor], Tensor], s: Tensor) -> Tuple[float, Tensor]:
    s = s.detach().clone().requires_grad_(True)
    v = fn(s)
    if not v.requires_grad:
        return float(v.detach()), torch.zeros_like(s)
    (g,) = torch.autograd.grad(v, s, allow_unused=True)
    return float(v.detach()), torch.zeros_like(s) if g is None else g.detach()


@dataclass
class _Soft:
    vec: Tensor  # values and gradients of the soft part over the probes
    hard_weight: Optional[float]
    note: Optional[str] = None


def _soft_part(a: Adapted, T: Optional[float], K: int, B: int, seed: int) -> _Soft:
    parts, hard_weights, note = [], [], None
    for s, t, y in _probes(K, B, seed):
        if not a.takes_labels:
            v, g = _value_and_grad(lambda x: a.call(x, t, None, T), s)
            parts.append(_vec(v, g))
            continue
        ys = [y, (y + 1) % K, (y + 3) % K]
        vg = [_value_and_grad(lambda x, yy=yy: a.call(x, t, yy, T), s) for yy in ys]
        ce = [_value_and_grad(lambda x, yy=yy: F.cross_entropy(x, yy), s) for yy in ys]
        w = (vg[0][0] - vg[1][0]) / (ce[0][0] - ce[1][0])
        predicted = vg[0][0] + w * (ce[2][0] - ce[0][0])
        if abs(predicted - vg[2][0]) > TOL * max(1.0, abs(vg[2][0])):
            note = "the label-dependent part is not a multiple of batch-mean cross-entropy on the student logits"
        hard_weights.append(w)
        v = vg[0][0] - w * ce[0][0]
        g = vg[0][1] - w * ce[0][1]
        parts.append(_vec(v, g))
    hw = sum(hard_weights) / len(hard_weights) if hard_weights else None
    return _Soft(torch.cat(parts), hw, note)


def _shape_vec(shape: Shape, T: float, K: int, B: int, seed: int) -> Tensor:
    parts = []
    for s, t, _ in _probes(K, B, seed):
        v, g = _value_and_grad(lambda x: shape(x, t, T), s)
        parts.append(_vec(v, g))
    return torch.cat(parts)


def _fit(u: Tensor, v: Tensor) -> Tuple[float, float]:
    """Least-squares multiple r with u ≈ r·v, and the relative residual."""
    r = float(u @ v / (v @ v))
    return r, float((u - r * v).norm() / max(float(u.norm()), 1e-300))


def _exponent(r1: float, r2: float, x1: float, x2: float) -> float:
    if r1 == 0 or r2 == 0 or (r1 > 0) != (r2 > 0):
        return float("nan")
    return math.log(r1 / r2) / math.log(x1 / x2)


def _round(x: float) -> Optional[int]:
    return int(round(x)) if not math.isnan(x) and abs(x - round(x)) < 0.01 else None


def diagnose(
    fn: Callable[..., Any],
    temperature: Optional[float] = None,
    soft_weight: Optional[float] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Diagnosis:
    """Compare ``fn`` with the Hinton loss and name the known pitfall it matches (or none).

    ``temperature`` is the T to probe at; it is required when ``fn`` takes no T argument (a
    closure or constant T). ``soft_weight`` is the weight you intend on the soft term; it is
    only needed to read T's exponent when T cannot be varied (default 1, or 1 − hard weight when
    the function mixes in cross-entropy with a weight below 1).
    """
    a = adapt(fn, extra)
    if not a.takes_T and temperature is None:
        raise ConfigError(f"{a.describe()} takes no temperature argument; pass the T it uses with -T")
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"-T must be > 0, got {temperature}")
    T1 = float(temperature if temperature is not None else 4.0)
    K1, B1, seed = 10, 8, 0
    evidence: List[str] = []
    findings: List[str] = []

    base = _soft_part(a, T1, K1, B1, seed)
    hinton = _shape_vec(_kl, T1, K1, B1, seed) * T1 * T1
    ref_val, our_val = float(hinton[0]), float(base.vec[0])
    g_ref, g_our = hinton[1 : 1 + B1 * K1], base.vec[1 : 1 + B1 * K1]
    cos = float(F.cosine_similarity(g_ref, g_our, dim=0)) if float(g_our.norm()) > 0 else float("nan")
    evidence.append(f"probe (B={B1}, K={K1}, T={T1:g}): soft value yours {our_val:.6g} vs hinton {ref_val:.6g}; "
                    f"gradient cosine to hinton's {cos:.4f}, norm ratio {float(g_our.norm() / g_ref.norm()):.4g}")
    if base.hard_weight is not None:
        evidence.append(f"label-dependent part = {base.hard_weight:.6g} × cross-entropy (effective hard weight)")
    if base.note:
        findings.append(base.note)

    # Teacher gradient.
    s, t, y = _probes(K1, B1, seed, 1)[0]
    t_req = t.clone().requires_grad_(True)
    out = a.call(s.clone().requires_grad_(True), t_req, y if a.takes_labels else None, T1)
    teacher_grad = False
    if out.requires_grad:
        (gt,) = torch.autograd.grad(out, t_req, allow_unused=True)
        teacher_grad = gt is not None and float(gt.abs().max()) > 0
    warnings: List[str] = []
    if teacher_grad:
        warnings.append("gradient flows into the teacher logits unless the caller computes them under no_grad "
                        "(detach them inside the loss to be safe)")
        evidence.append(f"d(loss)/d(teacher logits) has max |value| {float(gt.abs().max()):.3g}; the correct loss gives 0")

    # Shape.
    shape_name, r1 = None, float("nan")
    fits = {}
    for name, (shape, _) in SHAPES.items():
        r, resid = _fit(base.vec, _shape_vec(shape, T1, K1, B1, seed))
        fits[name] = (r, resid)
        if resid < TOL and shape_name is None:
            shape_name, r1 = name, r
    if shape_name is None:
        best = min(fits, key=lambda n: fits[n][1])
        findings.append("soft term is not proportional to any known form of the KD loss"
                        + ("" if a.takes_T else f" at T={T1:g} (T is fixed inside the function: is -T the value it uses?)"))
        evidence.append(f"closest known form: {best} (relative residual {fits[best][1]:.3g}; a match needs < {TOL:g})")
        return Diagnosis(False, None, findings, evidence, a.describe(), warnings, None, {}, None, base.hard_weight, teacher_grad)
    if SHAPES[shape_name][1]:
        findings.append(SHAPES[shape_name][1])
    evidence.append(f"soft part = {r1:.6g} × {shape_name} (batch-mean, no T factor), residual {fits[shape_name][1]:.1e}")

    def ratio(T: float, K: int, B: int) -> float:
        soft = _soft_part(a, T, K, B, seed + 1)
        return _fit(soft.vec, _shape_vec(SHAPES[shape_name][0], T, K, B, seed + 1))[0]

    r_base = ratio(T1, K1, B1)
    m_raw = _exponent(r_base, ratio(T1, 6, B1), K1, 6)
    b_raw = _exponent(r_base, ratio(T1, K1, 20), B1, 20)
    m, b = _round(m_raw), _round(b_raw)
    if m is None or b is None:
        findings.append("the soft term scales oddly with the class count or batch size")
        evidence.append(f"scaling exponents: classes {m_raw:.3g}, batch {b_raw:.3g} (expected 0 and 0)")
        return Diagnosis(False, None, findings, evidence, a.describe(), warnings, shape_name, {}, None, base.hard_weight, teacher_grad)
    if a.takes_T:
        T2 = T1 * 1.5
        k_raw = _exponent(r_base, ratio(T2, K1, B1), T1, T2)
        k = _round(k_raw)
        c = r_base / (T1 ** (k if k is not None else k_raw) * K1**m * B1**b)
        evidence.append(f"re-probed at T={T2:g}: soft term ∝ T^{k_raw:.3f}")
    else:
        if soft_weight is None:
            hw = base.hard_weight
            soft_weight = 1.0 - hw if hw is not None and 0 < hw < 1 else 1.0
        c = soft_weight
        k_raw = math.log(abs(r_base) / (c * K1**m * B1**b)) / math.log(T1) if T1 != 1 and r_base != 0 else float("nan")
        k = _round(k_raw)
        evidence.append(f"T is fixed inside the function, so its exponent assumes soft weight {c:g}: soft term ∝ T^{k_raw:.3f}")
    evidence.append(f"scaling: ∝ K^{m} in the class count, ∝ B^{b} in the batch size; effective soft weight {c:.6g}")
    if k is None:
        findings.append(f"the soft term scales as T^{k_raw:.3g} instead of T^2")
    elif k == 0:
        findings.append("missing T² factor (gradient T² too small; raising T switches distillation off)")
    elif k == 1:
        findings.append("multiplied by T instead of T²")
    elif k == 3:
        findings.append("extra factor T (T³ overall; soft term T times too strong)")
    elif k != 2:
        findings.append(f"scaled by T^{k} instead of T²")
    if m == -1:
        findings.append("reduction='mean' divides by the class count (use 'batchmean')")
    elif m != 0:
        findings.append(f"scales as K^{m} with the class count")
    if b == 1:
        findings.append("sums over the batch (grows with batch size; use 'batchmean')")
    elif b != 0:
        findings.append(f"scales as B^{b} with the batch size")
    if c < 0:
        findings.append("negative soft weight: the student is pushed away from the teacher")
    matches = REGISTERED.get((shape_name, k, m, b))
    correct = not findings
    return Diagnosis(correct, matches, findings, evidence, a.describe(), warnings, shape_name, {"T": k, "K": m, "B": b}, c, base.hard_weight, teacher_grad)
