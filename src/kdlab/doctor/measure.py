"""Calling the adapted loss on probe tensors: finite values and gradients, or a report of the input
that made it NaN/inf, or a hint at ``--shape`` when it only runs on logits with more axes."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .calling import Adapted, UserFunctionError
from .probes import Layout, make_probes, parse_layout

ALTERNATIVES = ("B,L,K", "B,K,H,W")


class NonFiniteResult(Exception):
    """The loss (or its gradient) was NaN/inf; the message names the input that produced it."""


def _fmt(x: Tensor) -> str:
    flat = x.detach().flatten().tolist()
    if len(flat) <= 12:
        return "[" + ", ".join(f"{v:.4g}" for v in flat) + "]"
    return f"{tuple(x.shape)} tensor in [{min(flat):.4g}, {max(flat):.4g}]"


class Meter:
    """Evaluates the user's loss; every value and gradient it returns is finite."""

    def __init__(self, a: Adapted, layout: Layout):
        self.a, self.layout = a, layout

    def value_grad(self, s: Tensor, t: Tensor, y: Optional[Tensor], T: float) -> Tuple[float, Tensor]:
        x = s.detach().clone().requires_grad_(True)
        out = self.a.call(x, t, y if self.a.takes_labels else None, T)
        g = None
        value = float(out.detach())
        if out.requires_grad and math.isfinite(value):
            (g,) = torch.autograd.grad(out, x, allow_unused=True)
        g = torch.zeros_like(x) if g is None else g
        if not math.isfinite(value) or not bool(torch.isfinite(g).all()):
            raise NonFiniteResult(self._where(s, t, y, T, value))
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

    def first_call(self, T: float, seed: int, given_layout: bool) -> None:
        """One call on the base probe; when it fails on (B, K) logits, try the usual other layouts."""
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
                raise ConfigError(f"{str(exc).split('; expected')[0]} on {self.layout.text()} logits, but it runs on "
                                  f"{alt.text()} logits; pass --shape {text}") from None
            raise

    def extreme(self, T: float, seed: int) -> List[str]:
        """Findings for logits far apart (|logit/T| ~ 1000), where log(softmax) underflows to -inf."""
        sizes = self.layout.sizes
        for p in make_probes(self.layout, sizes, seed + 7, 1, scale=150.0 * T):
            try:
                self.value_grad(p.s, p.t, p.y, T)
            except NonFiniteResult as exc:
                return [f"{exc} (extreme but valid logits, |logit/T| up to ~1000: compute log-probabilities "
                        f"with log_softmax, not log(softmax(...)))"]
        return []
