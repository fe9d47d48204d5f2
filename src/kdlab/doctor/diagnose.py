"""``kdlab doctor``: is this KD loss function right, and if not, which known mistake is it?

Method (all on random float64 probe logits, so nothing depends on a dataset):

1. If the function takes labels, its hard term is separated out: over three label sets the
   label-dependent part must be ``a·CE(s, y)``; ``a`` is the effective hard weight. When it is
   not (CE on s/T, focal loss, …) that is a hard-term note, and the soft term is judged from the
   *teacher-dependent* part alone (loss(t) − loss(t′)), which no hard term can touch.
2. The gradient of the soft part w.r.t. the student logits is matched first (it is what trains)
   against the shapes of known codings — KL(p‖q), probabilities fed as KL input, reversed
   KL(q‖p), student logits not divided by T — by least squares: a shape matches when the soft
   gradient is a constant multiple r of it (relative residual < 1e-5), optionally plus a multiple
   of cross-entropy to the uniform distribution (label smoothing: a hard-term note). The value
   is compared afterwards: a difference that does not depend on the student (soft-target CE =
   KL + the teacher's entropy) is a note, not a problem.
3. The multiple is decomposed as r = c · T^k · K^m · B^b · L^l… by re-probing with another
   temperature (when T is an argument or a constructor argument), class count K, batch size B
   and each position axis (``--shape B,L,K``): k = 2 is the correct T², m = −1 is
   ``reduction='mean'``, b = 1 a sum over the batch, l = 1 a sum over tokens; c is the soft weight.
   When no KL coding matches, losses that are not a KL at all (MSE of logits or of softened
   probabilities, Jensen–Shannon, cosine) are tried the same way — before the teacher-only
   fallback, whose teacher part alone cannot tell MSE of probabilities from probabilities fed as
   KL input — and named, with the gradient's correlation and norm ratio against Hinton's.
4. The teacher logits are given ``requires_grad`` to see whether gradient reaches them (a note:
   it only matters when the caller's teacher logits carry grad), and the loss is evaluated on
   float32 logits up to |logit| = 50, where NaN/inf is a problem, then larger, where it is a
   robustness note giving the range that stays finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DistillConfig, rule_of
from ..errors import ConfigError
from .calling import Adapted, adapt
from .measure import Meter, NonFiniteResult
from .scaling import size_findings, temperature_exponent
from .probes import (FORMS, NON_KL, Layout, cross_entropy, exponent, fit, kl, make_probes, round_exponent,
                     teacher_entropy, uniform_ce, value_and_grad)

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
    notes: List[str] = field(default_factory=list)  # not problems: constant offset, hard-term changes, reductions
    guesses: List[str] = field(default_factory=list)  # "doctor: using ..." lines, printed first
    offset: Optional[float] = None  # loss − matched form at the first probe, when not 0
    label_smoothing: Optional[float] = None
    layout: str = "B,K"  # the logit axes it was diagnosed on
    versus_hinton: Dict[str, float] = field(default_factory=dict)  # soft gradient vs Hinton's: correlation, norm_ratio

    def lines(self) -> List[str]:
        if self.correct:
            head = ("CORRECT: same gradient as the Hinton loss (its value differs by a constant, see NOTE)"
                    if self.offset is not None else "CORRECT: matches the Hinton loss")
        else:
            head = "PROBLEM: " + "; ".join(self.findings)
        out = self.guesses + [f"called as {self.call}", head] + [f"WARNING: {w}" for w in self.warnings]
        out += [f"NOTE: {n}" for n in self.notes]
        if self.matches:
            out.append(f"same as kdlab's registered coding '{self.matches}' (see `kdlab losses`)")
        return out + ["evidence:"] + [f"  {e}" for e in self.evidence]


@dataclass
class _Soft:
    full: Tensor  # d(loss − hard term)/ds over the probes
    tdiff: Tensor  # d(loss(t) − loss(t′))/ds: the teacher-dependent part only
    values: List[float]  # loss − hard term, per probe
    uniform: Tensor  # d(uniform CE)/ds: the label-smoothing column
    uniform_values: List[float]
    hard_weight: Optional[float]
    linear: bool  # the label-dependent part is a multiple of cross-entropy


class _Run:
    """The probes of one diagnosis: measured soft parts and reference forms on the same inputs."""

    def __init__(self, a: Adapted, meter: Meter, layout: Layout, teacher_only: bool = False):
        self.a, self.meter, self.layout, self.cd = a, meter, layout, layout.class_dim
        self.teacher_only = teacher_only

    def soft(self, T: float, sizes: Dict[str, int], seed: int) -> _Soft:
        full, tdiff, values, uni, uni_values, weights, linear = [], [], [], [], [], [], True
        K = sizes["K"]
        for p in make_probes(self.layout, sizes, seed):
            v, g = self.meter.value_grad(p.s, p.t, p.y, T)
            tdiff.append(g - self.meter.value_grad(p.s, p.t2, p.y, T)[1])
            uv, ug = value_and_grad(lambda x: uniform_ce(x, self.cd), p.s)
            uni.append(ug.flatten())
            uni_values.append(uv)
            if self.a.takes_labels:
                ys = [(p.y + 1) % K, (p.y + 3) % K]
                other = [self.meter.value_grad(p.s, p.t, yy, T) for yy in ys]
                ce = [value_and_grad(lambda x, yy=yy: cross_entropy(x, yy, self.cd), p.s) for yy in [p.y] + ys]
                diff = lambda a, b: torch.cat([torch.tensor([a[0] - b[0]], dtype=torch.float64), (a[1] - b[1]).flatten()])  # noqa: E731
                (w,), resid = fit(torch.cat([diff((v, g), o) for o in other]), [torch.cat([diff(ce[0], c) for c in ce[1:]])])
                linear = linear and resid < TOL
                weights.append(w)
                v, g = v - w * ce[0][0], g - w * ce[0][1]
            full.append(g.flatten())
            tdiff[-1] = tdiff[-1].flatten()
            values.append(v)
        hw = sum(weights) / len(weights) if weights else None
        return _Soft(torch.cat(full), torch.cat(tdiff), values, torch.cat(uni), uni_values, hw, linear)

    def form(self, fn: Callable, T: float, sizes: Dict[str, int], seed: int) -> Tuple[Tensor, Tensor, List[float]]:
        full, tdiff, values = [], [], []
        for p in make_probes(self.layout, sizes, seed):
            v, g = value_and_grad(lambda x: fn(x, p.t, T, self.cd), p.s)
            g2 = value_and_grad(lambda x: fn(x, p.t2, T, self.cd), p.s)[1]
            full.append(g.flatten())
            tdiff.append((g - g2).flatten())
            values.append(v)
        return torch.cat(full), torch.cat(tdiff), values

    def fit(self, name: str, soft: _Soft, T: float, sizes: Dict[str, int], seed: int,
            smoothing: Optional[bool] = None) -> Tuple[List[float], float, bool, List[float]]:
        """(coefficients, residual, label-smoothing column used, the form's values)."""
        full, tdiff, values = self.form({**FORMS, **NON_KL}[name][0], T, sizes, seed)
        if self.teacher_only:
            coef, resid = fit(soft.tdiff, [tdiff])
            return coef, resid, False, values
        if not smoothing:
            coef, resid = fit(soft.full, [full])
            if resid < TOL or smoothing is False or not self.a.takes_labels:
                return coef, resid, False, values
        coef, resid = fit(soft.full, [full, soft.uniform])
        return coef, resid, True, values


def _temperature(a: Adapted, temperature: Optional[float]) -> float:
    if temperature is not None:
        rule_of(DistillConfig, "temperature").check_argument(temperature, "-T", "give the temperature to probe at, e.g. -T 4")
        if a.init_T and a.init_T in a.init and a.init[a.init_T] != temperature:
            raise ConfigError(f"-T {temperature:g} and --init {a.init_T}={a.init[a.init_T]} disagree; give the temperature once")
        a.default_T_source = None
        return float(temperature)
    if a.default_T is not None:
        return a.default_T
    if a.takes_T:
        return 4.0
    raise ConfigError(f"{a.describe()} takes no temperature argument; pass the T it uses with -T")


def diagnose(
    fn: Any,
    temperature: Optional[float] = None,
    soft_weight: Optional[float] = None,
    extra: Optional[Dict[str, Any]] = None,
    *,
    init: Optional[Dict[str, Any]] = None,
    student_arg: Optional[str] = None,
    teacher_arg: Optional[str] = None,
    layout: Optional[Layout] = None,
) -> Diagnosis:
    """Compare ``fn`` (function, loss class or instance, or an :class:`Adapted`) with the Hinton loss.

    ``temperature`` is the T to probe at; it is required when ``fn`` takes no T (a closure or
    constant T). ``soft_weight`` is the weight you intend on the soft term; it is only needed to
    read T's exponent when T cannot be varied. ``layout`` gives logits more axes (``B,L,K``).
    """
    a = fn if isinstance(fn, Adapted) else adapt(fn, extra, init, student_arg, teacher_arg)
    given_layout = layout is not None
    layout = layout or Layout()
    T1 = _temperature(a, temperature)
    meter = Meter(a, layout)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # probes are tiny: intra-op threads only add contention (30x slower on a busy machine)
    layout_note = []
    try:
        other = meter.first_call(T1, 0, given_layout)
        if other is not None:
            layout, layout_note = other[0], [other[1]]
            meter = Meter(a, layout)
        d = _diagnose(a, meter, layout, T1, soft_weight)
    except NonFiniteResult as exc:
        d = Diagnosis(False, None, [f"{exc} (ordinary probe logits, |logit| <= {exc.bound:.3g})"],
                      ["a KD loss must be finite for finite logits"], a.describe())
    finally:
        torch.set_num_threads(threads)
    d.guesses = a.guess_lines()
    d.notes = layout_note + d.notes
    d.layout = ",".join(layout.dims)
    return d


def _diagnose(a: Adapted, meter: Meter, layout: Layout, T1: float, soft_weight: Optional[float]) -> Diagnosis:
    seed, sizes = 0, dict(layout.sizes)
    evidence: List[str] = []
    findings: List[str] = []
    notes: List[str] = []
    run = _Run(a, meter, layout)
    base = run.soft(T1, sizes, seed)
    run.teacher_only = not base.linear
    hw = base.hard_weight
    if a.takes_labels and base.linear:
        evidence.append(f"label-dependent part = {hw:.6g} × cross-entropy (effective hard weight)")
    elif a.takes_labels:
        notes.append("hard term: the label-dependent part is not a multiple of cross-entropy on the student logits "
                     "(e.g. a focal loss or MSE to one-hot labels); the soft term was judged from how the loss changes with the teacher logits")
    warnings: List[str] = []
    teacher_grad = _teacher_gradient(a, layout, T1, evidence, notes)

    shape_name, fits = _match(run, base, T1, sizes, seed)
    if shape_name is None:  # before the teacher-only fallback: MSE of probabilities has prob-input's teacher part
        other, _ = _match(run, base, T1, sizes, seed, NON_KL)
        if other is not None:
            return _not_kl(other, run, base, meter, T1, sizes, seed, findings, evidence, notes, hw, teacher_grad)
    if shape_name is None and a.takes_labels and not run.teacher_only:
        run.teacher_only = True  # a student-only part besides w·CE (CE on s/T, an entropy term): judge the teacher part
        shape_name, _ = _match(run, base, T1, sizes, seed)
        if shape_name is None:
            run.teacher_only = False
        else:
            notes.append(f"hard term: besides {hw:.4g} × cross-entropy the loss has a part that depends on the student "
                         "only (e.g. the hard CE computed on s/T, or an entropy term); it is not part of the soft term, "
                         "which was judged from how the loss changes with the teacher logits")
    if shape_name is None:
        best = min(fits, key=lambda k: fits[k][1])
        findings.append("soft term is not proportional to any known form of the KD loss"
                        + ("" if a.takes_T else f" at T={T1:g} (T is fixed inside the function: is -T the value it uses?)"))
        evidence.append(f"closest known form: {best} (relative residual {fits[best][1]:.3g}; a match needs < {TOL:g})")
        versus = _versus_hinton(run, base, None, T1, sizes, seed)
        evidence.append(_versus_text(versus, run, T1))
        return Diagnosis(False, None, findings, evidence, a.describe(), warnings, None, {}, None, hw, teacher_grad, notes,
                         versus_hinton=versus)
    coef, resid, smoothing, form_values = run.fit(shape_name, base, T1, sizes, seed)
    r1 = coef[0]
    _compare_with_hinton(run, base, coef, smoothing, T1, sizes, seed, layout, evidence)
    if FORMS[shape_name][1]:
        findings.append(FORMS[shape_name][1])
    evidence.append(f"soft gradient = {r1:.6g} × that of {shape_name} (mean over positions, no T factor), residual {resid:.1e}")

    eps = None
    if smoothing:
        u = coef[1]
        total = (hw or 0.0) + u
        eps = u / total if total else None
        if eps is not None and 0 < eps < 1:
            notes.append(f"hard term: cross-entropy with label smoothing {eps:.4g} (hard weight {total:.6g}); "
                         "a change to the hard term, not to the soft term")
            hw = total
        else:
            notes.append(f"hard term: plus {u:.4g} × cross-entropy to the uniform distribution (a student-only term)")
    offset = None if run.teacher_only else _offset(run, base, coef, smoothing, form_values, T1, sizes, seed, notes)

    def ratio(T: float, **change: int) -> float:
        s2 = {**sizes, **change}
        return run.fit(shape_name, run.soft(T, s2, seed + 1), T, s2, seed + 1, smoothing)[0][0]

    r_base = ratio(T1)
    raw = {"K": exponent(r_base, ratio(T1, K=sizes["K"] + 4), sizes["K"], sizes["K"] + 4),
           "B": exponent(r_base, ratio(T1, B=sizes["B"] + 12), sizes["B"], sizes["B"] + 12)}
    for d in layout.positions:
        raw[d] = exponent(r_base, ratio(T1, **{d: sizes[d] + 4}), sizes[d], sizes[d] + 4)
    ex = {d: round_exponent(x) for d, x in raw.items()}
    if any(e is None for e in ex.values()):
        findings.append("the soft term scales oddly with " + ", ".join(d for d, e in ex.items() if e is None))
        evidence.append("scaling exponents: " + ", ".join(f"{d} {x:.3g}" for d, x in raw.items()) + " (expected integers)")
        return Diagnosis(False, None, findings, evidence, a.describe(), warnings, shape_name, {}, None, hw, teacher_grad, notes)
    size_factor = math.prod(sizes[d] ** e for d, e in ex.items())
    k, c = temperature_exponent(a, ratio, r_base, size_factor, T1, hw, soft_weight, findings, evidence, notes)
    evidence.append("scaling: " + ", ".join(f"∝ {d}^{e}" for d, e in ex.items()) + (f"; effective soft weight {c:.6g}" if c is not None else ""))
    size_findings(ex, findings, notes)
    if c is not None and c < 0:
        findings.append("negative soft weight: the student is pushed away from the teacher")
    extreme, robust, robust_evidence = meter.extreme(T1, seed)
    findings += extreme
    notes += robust
    evidence += robust_evidence
    matches = None
    if layout.dims == ("B", "K") and not run.teacher_only and not smoothing and not extreme:
        matches = REGISTERED.get((shape_name, k, ex["K"], ex["B"]))
    return Diagnosis(not findings, matches, findings, evidence, a.describe(), warnings, shape_name, {"T": k, **ex}, c, hw,
                     teacher_grad, notes, offset=offset, label_smoothing=eps)


def _match(run: _Run, base: _Soft, T: float, sizes: Dict[str, int], seed: int,
           forms: Dict[str, Any] = FORMS) -> Tuple[Optional[str], Dict[str, Any]]:
    """The first known form whose gradient the soft part is a multiple of, and every form's fit."""
    fits: Dict[str, Any] = {}
    for name in forms:
        fits[name] = run.fit(name, base, T, sizes, seed)
        if fits[name][1] < TOL:
            return name, fits
    return None, fits


def _versus_hinton(run: _Run, base: _Soft, uniform: Optional[float], T: float, sizes: Dict[str, int],
                   seed: int) -> Dict[str, float]:
    """Pearson correlation and norm ratio of the soft gradient (w.r.t. the student logits, all probes) with
    the Hinton loss's, T²·KL; ``uniform`` is the label-smoothing coefficient to take out, if one was fitted."""
    full, tdiff, _ = run.form(kl, T, sizes, seed)
    ref = (tdiff if run.teacher_only else full) * T * T
    ours = base.tdiff if run.teacher_only else base.full - (uniform * base.uniform if uniform else 0.0)
    if float(ours.norm()) == 0:
        return {"correlation": 0.0, "norm_ratio": 0.0}
    corr = float(torch.corrcoef(torch.stack([ours, ref]))[0, 1])
    return {"correlation": corr, "norm_ratio": float(ours.norm() / ref.norm())}


def _versus_text(versus: Dict[str, float], run: _Run, T: float) -> str:
    what = "teacher-dependent gradient" if run.teacher_only else "gradient w.r.t. the student logits"
    return (f"{what} vs Hinton's (T²·KL, T={T:g}): correlation {versus['correlation']:.3f}, "
            f"norm ratio {versus['norm_ratio']:.3g}")


def _not_kl(name: str, run: _Run, base: _Soft, meter: Meter, T: float, sizes: Dict[str, int], seed: int,
            findings: List[str], evidence: List[str], notes: List[str], hw: Optional[float], teacher_grad: bool) -> Diagnosis:
    """A soft term that is a known loss but not a KL divergence: say what it is and how far its gradient is from Hinton's."""
    coef, resid, smoothing, _ = run.fit(name, base, T, sizes, seed)
    findings.append(f"{NON_KL[name][1]}, not a KL divergence, so not proportional to Hinton's loss")
    versus = _versus_hinton(run, base, coef[1] if smoothing else None, T, sizes, seed)
    evidence.append(f"soft gradient = {coef[0]:.6g} × that of {name} (mean over positions), residual {resid:.1e}")
    notes.append(_versus_text(versus, run, T))
    notes.append("for Hinton KD use F.kl_div(F.log_softmax(s/T, 1), F.softmax(t/T, 1), reduction='batchmean') * T**2")
    if smoothing:
        notes.append(f"hard term: plus {coef[1]:.4g} × cross-entropy to the uniform distribution (label smoothing)")
    extreme, robust, robust_evidence = meter.extreme(T, seed)
    findings += extreme
    notes += robust
    evidence += robust_evidence
    return Diagnosis(False, None, findings, evidence, run.a.describe(), [], name, {}, None, hw, teacher_grad, notes,
                     versus_hinton=versus)


def _compare_with_hinton(run: _Run, base: _Soft, coef: List[float], smoothing: bool, T: float, sizes: Dict[str, int],
                         seed: int, layout: Layout, evidence: List[str]) -> None:
    """Evidence line: the soft gradient against the Hinton loss's on the first probe."""
    n = base.full.numel() // 3
    full, tdiff, _ = run.form(kl, T, sizes, seed)
    g_ref = (tdiff if run.teacher_only else full)[:n] * T * T
    g_our = (base.tdiff if run.teacher_only else base.full - (coef[1] * base.uniform if smoothing else 0.0))[:n]
    cos = float(F.cosine_similarity(g_ref, g_our, dim=0)) if float(g_our.norm()) > 0 else 0.0
    what = "teacher-dependent gradient" if run.teacher_only else "soft gradient"
    evidence.append(f"probe {layout.text(sizes)}, T={T:g}: {what} cosine to hinton's {cos:.4f}, "
                    f"norm ratio {float(g_our.norm() / g_ref.norm()):.4g}")


def _teacher_gradient(a: Adapted, layout: Layout, T: float, evidence: List[str], notes: List[str]) -> bool:
    """Whether the loss passes gradient back into the teacher logits: a note, not a fault — it only matters when
    the caller's teacher logits carry grad (teacher run without no_grad and trained); kdlab's teacher never does."""
    p = make_probes(layout, layout.sizes, 0, 1)[0]
    t_req = p.t.clone().requires_grad_(True)
    out = a.call(p.s.clone().requires_grad_(True), t_req, p.y if a.takes_labels else None, T)
    if not out.requires_grad:
        return False
    (gt,) = torch.autograd.grad(out, t_req, allow_unused=True)
    if gt is None or not float(gt.abs().max()) > 0:
        return False
    evidence.append(f"d(loss)/d(teacher logits) has max |value| {float(gt.abs().max()):.3g} (0 with a detached teacher)")
    notes.append("teacher logits not detached: fine when the teacher runs under torch.no_grad() (kdlab does); "
                 "add .detach() if the teacher is trained too")
    return True


def _offset(run: _Run, base: _Soft, coef: List[float], smoothing: bool, form_values: List[float], T: float,
            sizes: Dict[str, int], seed: int, notes: List[str]) -> Optional[float]:
    """Value − the matched form: a note when it is a student-independent constant (gradients already matched)."""
    u = coef[1] if smoothing else 0.0
    offs = [v - coef[0] * f - u * uv for v, f, uv in zip(base.values, form_values, base.uniform_values)]
    scale = max(1.0, *(abs(v) for v in base.values))
    if max(abs(o) for o in offs) <= 1e-6 * scale:
        return None
    ent = [coef[0] * teacher_entropy(p.t, T, run.cd) for p in make_probes(run.layout, sizes, seed)]
    if all(abs(o - e) <= 1e-6 * scale for o, e in zip(offs, ent)):
        notes.append(f"the value is the Hinton loss plus {coef[0]:.6g} × the teacher's entropy H(softmax(t/T)) "
                     f"({offs[0]:.6g} at the probe): soft-target cross-entropy = KL + H(teacher); the offset does not "
                     "depend on the student, so the gradient and training are the same")
    else:
        notes.append(f"the value differs from the matched form by a term that does not depend on the student "
                     f"({offs[0]:.6g} at the probe); the gradient and training are the same")
    return offs[0]
