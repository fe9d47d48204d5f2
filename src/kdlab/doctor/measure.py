"""Calling the adapted loss on probe tensors: finite values and gradients, or a report of the input
that made it NaN/inf; the layout to use when it only runs on logits with more axes; and how large
the logits can get before it stops being finite."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .calling import Adapted, UserFunctionError
from .probes import Layout, Probe, make_probes, parse_layout

ALTERNATIVES = ("B,L,K", "B,K,H,W")
LAYOUT_WORDS = {"B,L,K": "sequence", "B,K,H,W": "dense"}
# Logits a trained network really produces: kdlab's mnist-mlp teacher after 5 epochs (97.7% test accuracy)
# gives max |logit| 13 (median image), 31 (99th percentile), 41 (worst of 10,000), and logits grow with
# training. NaN/inf up to this bound is a bug that training can hit; beyond it, only a robustness note
# (probed up to |logit/T| ~ 1000).
REALISTIC_LOGIT = 50.0
EXTREME_LOGIT_OVER_T = 1000.0
LOG_SPACE = "computing in log space (F.log_softmax, F.kl_div) stays finite for any logits"


class NonFiniteResult(Exception):
    """The loss (or its gradient) was NaN/inf; the message names the input that produced it."""

    def __init__(self, message: str, bound: float):
        super().__init__(message)
        self.bound = bound  # the largest |logit| in the call that failed


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _fmt(x: Tensor) -> str:
    flat = x.detach().flatten().tolist()
    if len(flat) <= 12:
        return "[" + ", ".join(f"{v:.4g}" for v in flat) + "]"
    return f"{tuple(x.shape)} tensor in [{min(flat):.4g}, {max(flat):.4g}]"


class Meter:
    """Evaluates the user's loss; every value and gradient it returns is finite."""

    def __init__(self, a: Adapted, layout: Layout):
        self.a, self.layout = a, layout
        self.dtype = torch.float32  # of the large-logit probes

    def value_grad(self, s: Tensor, t: Tensor, y: Optional[Tensor], T: float) -> Tuple[float, Tensor]:
        x = s.detach().clone().requires_grad_(True)
        out = self.a.call(x, t, y if self.a.takes_labels else None, T)
        g = None
        value = float(out.detach())
        if out.requires_grad and math.isfinite(value):
            (g,) = torch.autograd.grad(out, x, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        if not math.isfinite(value) or not bool(torch.isfinite(g).all()):
            raise NonFiniteResult(self._where(s, t, y, T, value), max(float(s.abs().max()), float(t.abs().max())))
        return value, g

    def _where(self, s: Tensor, t: Tensor, y: Optional[Tensor], T: float, value: float) -> str:
        """Shrink to one batch row that still gives NaN/inf, so the input can be printed."""
        bd = self.layout.dims.index("B")
        what = "a nan/inf gradient" if math.isfinite(value) else f"{value}"
        for b in range(s.shape[bd]):
            row = [s.narrow(bd, b, 1), t.narrow(bd, b, 1), None if y is None else y.narrow(bd, b, 1)]
            try:
                x = row[0].clone().requires_grad_(True)
                out = self.a.call(x, row[1], row[2] if self.a.takes_labels else None, T)
                bad = not math.isfinite(float(out.detach()))
                if not bad and out.requires_grad:
                    (g,) = torch.autograd.grad(out, x, allow_unused=True)
                    bad = g is not None and not bool(torch.isfinite(g).all())
            except ConfigError:
                bad = False
            if bad:
                s, t, y = row[0], row[1], row[2]
                break
        labels = f", labels {_fmt(y)}" if y is not None and self.a.takes_labels else ""
        return f"returns {what} for student logits {_fmt(s)}, teacher logits {_fmt(t)}{labels}, T={T:g}"

    def first_call(self, T: float, seed: int, given_layout: bool) -> Optional[Tuple[Layout, str]]:
        """One call on the base probe. When it fails on (B, K) logits but runs on another usual layout,
        return that layout and a note saying so (the diagnosis goes on with it); else re-raise."""
        p = make_probes(self.layout, self.layout.sizes, seed, 1)[0]
        try:
            self.value_grad(p.s, p.t, p.y, T)
        except UserFunctionError as exc:
            if given_layout:
                raise
            for text in ALTERNATIVES:
                alt = parse_layout(text)
                q = make_probes(alt, alt.sizes, seed, 1)[0]
                try:
                    Meter(self.a, alt).value_grad(q.s, q.t, q.y, T)
                except UserFunctionError:
                    continue
                except NonFiniteResult:
                    pass
                dims = ", ".join(alt.dims)
                return alt, (f"fails on (B, K) logits ({exc.cause}) but runs on ({dims}): diagnosed as "
                             f"{LAYOUT_WORDS[text]} logits {alt.text()}; --shape picks another layout")
            raise
        return None

    def _scaled(self, bound: float, seed: int, dtype: torch.dtype) -> Probe:
        """A probe whose student and teacher logits each reach |logit| = bound exactly."""
        p = make_probes(self.layout, self.layout.sizes, seed, 1)[0]
        s, t = (x * (bound / float(x.abs().max())) for x in (p.s, p.t))
        return Probe(s.to(dtype), t.to(dtype), p.t2, p.y)

    def _fails(self, bound: float, seed: int, T: float) -> Optional[str]:
        """The NaN/inf report at logits up to ``bound``, or None when finite. float32, as in training;
        float64 when the function refuses float32 input."""
        p = self._scaled(bound, seed, self.dtype)
        try:
            self.value_grad(p.s, p.t, p.y, T)
        except NonFiniteResult as exc:
            return str(exc)
        except UserFunctionError:
            if self.dtype == torch.float64:
                raise
            self.dtype = torch.float64
            return self._fails(bound, seed, T)
        return None

    def extreme(self, T: float, seed: int) -> Tuple[List[str], List[str], List[str]]:
        """(findings, notes, evidence) on large float32 logits.

        NaN/inf up to |logit| = REALISTIC_LOGIT is a finding. Beyond, logits are raised until
        |logit/T| ~ 1000; a failure there is a robustness note giving the largest finite |logit|."""
        seed += 7
        for bound in (REALISTIC_LOGIT / 5, REALISTIC_LOGIT):
            bad = self._fails(bound, seed, T)
            if bad:
                return ([f"{bad} ({_name(self.dtype)} logits with |logit| <= {bound:g}, realistic for a trained network; "
                         f"{LOG_SPACE})"], [], [])
        ok, bound = REALISTIC_LOGIT, REALISTIC_LOGIT
        while bound < EXTREME_LOGIT_OVER_T * T:
            bound = min(bound * 3, EXTREME_LOGIT_OVER_T * T)
            bad = self._fails(bound, seed, T)
            if bad:
                break
            ok = bound
        else:
            return [], [], []
        fail = bound
        for _ in range(8):  # bisect (geometrically) between the last finite and the first failing bound
            mid = math.sqrt(ok * fail)
            worse = self._fails(mid, seed, T)
            if worse:
                fail, bad = mid, worse
            else:
                ok = mid
        note = (f"robustness: finite up to |logit| ~ {ok:.3g} at T={T:g} (|logit/T| ~ {ok / T:.3g}, {_name(self.dtype)}), "
                f"so fine for the |logit| <= {REALISTIC_LOGIT:g} trained networks give; {LOG_SPACE}")
        return [], [note], [f"at |logit| ~ {fail:.3g}: {bad}"]
