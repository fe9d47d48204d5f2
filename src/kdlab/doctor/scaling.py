"""Reading the soft term's multiple r = c · T^k · K^m · B^b · L^l… as findings and notes.

Kept apart from :mod:`.diagnose` so each stays short. An exponent that cannot be estimated (T fixed
at 1, a sign change) is *said*, never printed as ``T^nan``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

from .calling import Adapted
from .probes import AXIS_WORDS, exponent, round_exponent


def temperature_exponent(a: Adapted, ratio: Callable[[float], float], r_base: float, size_factor: float, T1: float,
                         hw: Optional[float], soft_weight: Optional[float], findings: List[str], evidence: List[str],
                         notes: List[str]) -> Tuple[Optional[int], Optional[float]]:
    """(k, soft weight c) with r = c · T^k · size_factor; k is None (never NaN-printed) when undeterminable."""
    if a.takes_T:
        T2 = T1 * 1.5
        r2 = ratio(T2)
        k_raw = exponent(r_base, r2, T1, T2)
        if not math.isfinite(k_raw):
            findings.append(f"the T scaling cannot be determined: the soft term's multiple is {r_base:.3g} at T={T1:g} "
                            f"but {r2:.3g} at T={T2:g} (a sign change)")
            return None, None
        evidence.append(f"re-probed at T={T2:g}: soft term ∝ T^{k_raw:.3f}")
        k = round_exponent(k_raw)
        c = r_base / (T1 ** (k if k is not None else k_raw) * size_factor)
    elif abs(math.log(T1)) < 0.01:
        c = r_base / size_factor  # every power of T is ~1 here
        notes.append(f"T is fixed at {T1:g} inside the function, where every power of T is 1, so whether the soft term "
                     "has the T² factor cannot be determined at this T; set the function's T to another value (and -T "
                     "to match) to check it")
        return None, c
    else:
        if soft_weight is None:
            soft_weight = 1.0 - hw if hw is not None and 0 < hw < 1 else 1.0
        c = soft_weight
        if not (c > 0 and r_base > 0):
            findings.append(f"the T scaling cannot be determined at T={T1:g}: the soft term's multiple is {r_base:.3g} "
                            f"with soft weight {c:g}")
            return None, (r_base / (T1 * T1 * size_factor) if c > 0 else None)
        k_raw = math.log(r_base / (c * size_factor)) / math.log(T1)
        k = round_exponent(k_raw)
        evidence.append(f"T is fixed inside the function, so its exponent assumes soft weight {c:g}: soft term ∝ T^{k_raw:.3f}")
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
    return k, c


def size_findings(ex: Dict[str, int], findings: List[str], notes: List[str]) -> None:
    m, b = ex["K"], ex["B"]
    if m == -1:
        findings.append("reduction='mean' divides by the class count (use 'batchmean')")
    elif m != 0:
        findings.append(f"scales as K^{m} with the class count")
    if b == 1:
        findings.append("sums over the batch (grows with batch size; use 'batchmean')")
    elif b != 0:
        findings.append(f"scales as B^{b} with the batch size")
    for d, e in ex.items():
        if d in ("K", "B"):
            continue
        word = AXIS_WORDS.get(d, f"positions along {d}")
        batch = "averaged over the batch" if b == 0 else "summed over the batch"
        if e == 0:
            notes.append(f"averaged over {word} ({d}) and {batch}: the loss does not grow with {d}")
        elif e == 1:
            notes.append(f"summed over {word} ({d}) but {batch}: the loss grows in proportion to {d} "
                         f"(each position's gradient does not shrink as {d} grows)")
        else:
            findings.append(f"scales as {d}^{e} with the {word}")
