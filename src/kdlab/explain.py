"""Step-by-step walk through one Hinton KD loss computation (``kdlab explain``).

Default example: teacher logits [2.0, 1.0, 0.1], student logits [1.8, 0.9, 0.4], T = 2,
true class 0, hard weight 1, soft weight 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

from .errors import ConfigError

EXAMPLE = {"teacher": [2.0, 1.0, 0.1], "student": [1.8, 0.9, 0.4], "label": 0, "T": 2.0, "hard_weight": 1.0, "soft_weight": 0.5}


def _softmax(v: Sequence[float], T: float) -> List[float]:
    m = max(x / T for x in v)
    e = [math.exp(x / T - m) for x in v]
    z = sum(e)
    return [x / z for x in e]


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
        ]


def explain(teacher: Sequence[float], student: Sequence[float], label: int, T: float, hard_weight: float, soft_weight: float) -> Explanation:
    if len(teacher) != len(student) or len(teacher) < 2:
        raise ConfigError(f"teacher has {len(teacher)} logits and student {len(student)}; give the same number (>= 2)")
    if not T > 0:
        raise ConfigError(f"T must be > 0, got {T}")
    if not 0 <= label < len(student):
        raise ConfigError(f"label {label} is out of range for {len(student)} classes (0..{len(student) - 1})")
    if hard_weight < 0 or soft_weight < 0:
        raise ConfigError("weights must be >= 0")
    p, q, h = _softmax(teacher, T), _softmax(student, T), _softmax(student, 1.0)
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)
    ce = -math.log(h[label])
    return Explanation(p, q, h, kl, T * T * kl, ce, hard_weight * ce + soft_weight * T * T * kl)
