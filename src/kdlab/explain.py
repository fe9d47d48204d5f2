"""Step-by-step walk through one Hinton KD loss computation (``kdlab explain``).

Default example: teacher logits [2.0, 1.0, 0.1], student logits [1.8, 0.9, 0.4], T = 2,
true class 0, hard weight 1, soft weight 0.5.

Every quantity is computed in log space (log-softmax via log-sum-exp, KL from log-probabilities,
CE from the log-softmax), so logits of ±1000 or ±1e4 give finite, exact numbers where the naive
``log(softmax(x))`` would give ``log(0) = -inf`` and a NaN KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

from .config import DistillConfig, rule_of
from .errors import ConfigError

EXAMPLE = {"teacher": [2.0, 1.0, 0.1], "student": [1.8, 0.9, 0.4], "label": 0, "T": 2.0, "hard_weight": 1.0, "soft_weight": 0.5}


def _log_softmax(v: Sequence[float], T: float) -> List[float]:
    """log softmax(v / T) = v/T − logsumexp(v/T), shifted by the max so nothing overflows."""
    x = [vi / T for vi in v]
    m = max(x)
    lse = m + math.log(math.fsum(math.exp(xi - m) for xi in x))
    return [xi - lse for xi in x]


@dataclass
class Explanation:
    soft_labels: List[float]       # softmax(t/T)
    soft_predictions: List[float]  # softmax(s/T)
    hard_predictions: List[float]  # softmax(s)
    kl: float                      # KL(soft_labels || soft_predictions)
    soft_term: float               # T² · kl
    ce: float                      # −log hard_predictions[label]
    total: float                   # hard_weight·ce + soft_weight·soft_term

    def lines(self, T: float, label: int, hw: float, sw: float) -> List[str]:
        f = lambda v: "[" + ", ".join(f"{x:.3f}" for x in v) + "]"  # noqa: E731
        return [
            f"1. soft labels       p = softmax(teacher / T={T:g})  = {f(self.soft_labels)}",
            f"2. soft predictions  q = softmax(student / T={T:g})  = {f(self.soft_predictions)}",
            f"3. hard predictions      softmax(student)       = {f(self.hard_predictions)}",
            f"4. KL(p || q) = sum p*(log p - log q)            = {self.kl:.4f}",
            f"5. soft term  = T^2 * KL = {T * T:g} * {self.kl:.4f}          = {self.soft_term:.4f}",
            f"6. CE = -log softmax(student)[{label}]              = {self.ce:.4f}",
            f"7. total = {hw:g}*CE + {sw:g}*soft term                = {self.total:.4f}",
            f"   (without the T^2 factor the total would be {hw * self.ce + sw * self.kl:.4f})",
            "   (log p, log q and log softmax(student) are computed as x - logsumexp(x), so extreme logits stay finite)",
        ]


def _check_finite(name: str, values: Sequence[float]) -> None:
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{name} logits must be finite numbers, got {values[bad[0]]} at position {bad[0]}; "
                          f"give finite logits, e.g. --{name} 2.0,1.0,0.1")


def explain(teacher: Sequence[float], student: Sequence[float], label: int, T: float, hard_weight: float, soft_weight: float) -> Explanation:
    teacher, student = [float(x) for x in teacher], [float(x) for x in student]
    _check_finite("teacher", teacher)
    _check_finite("student", student)
    if len(teacher) != len(student) or len(teacher) < 2:
        raise ConfigError(f"teacher has {len(teacher)} logits and student {len(student)}; give the same number (>= 2)")
    if not rule_of(DistillConfig, "temperature").holds(T):
        raise ConfigError(f"T must be {rule_of(DistillConfig, 'temperature').text}, got {T}; e.g. -T 2")
    if not 0 <= label < len(student):
        raise ConfigError(f"label {label} is out of range for {len(student)} classes (0..{len(student) - 1})")
    for name, field_name, w in (("--hard-weight", "hard_weight", hard_weight), ("--soft-weight", "soft_weight", soft_weight)):
        rule = rule_of(DistillConfig, field_name)
        if not rule.holds(w):
            raise ConfigError(f"{name} must be {rule.text}, got {w}")
    if not all(math.isfinite(x / T) for x in teacher + student):
        raise ConfigError(f"logits / T overflow float64 at T={T:g}; use a larger T or smaller logits")
    log_p, log_q, log_h = _log_softmax(teacher, T), _log_softmax(student, T), _log_softmax(student, 1.0)
    p = [math.exp(x) for x in log_p]
    # KL from log-probabilities: a class with p = 0 (log p = -huge) contributes exactly 0.
    kl = math.fsum(pi * (lp - lq) for pi, lp, lq in zip(p, log_p, log_q) if pi > 0)
    kl = max(kl, 0.0)  # rounding can leave -1e-17 for identical distributions; KL >= 0
    ce = -log_h[label]
    soft_term, total = T * T * kl, hard_weight * ce + soft_weight * T * T * kl
    if not all(math.isfinite(x) for x in (kl, soft_term, ce, total)):
        raise ConfigError(f"the loss overflows float64 for these logits at T={T:g} (KL {kl:g}); use smaller logits or a larger T")
    return Explanation(p, [math.exp(x) for x in log_q], [math.exp(x) for x in log_h], kl, soft_term, ce, total)
