"""Adam/AdamW whose ``step`` calls the fused CPU kernel directly.

For a small student, ``torch.optim.Adam(fused=True).step()`` spends several times longer in
Python bookkeeping than in its kernel — a noticeable share of the whole training step. The lean path
makes exactly the two calls the stock fused implementation makes (increment the step counters,
run ``_fused_adam(w)_``) on the same state tensors, so results, ``state_dict`` and resume are
identical to ``torch.optim.Adam(fused=True)``. Anything unusual (closure, missing grads, sparse
grads, amsgrad, a kernel this torch build lacks) falls back to the stock ``step``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch


_ONES: dict = {}


def _one(step: torch.Tensor) -> torch.Tensor:
    """A cached 0-dim 1 of ``step``'s dtype and device."""
    key = (step.dtype, step.device)
    if key not in _ONES:
        _ONES[key] = torch.ones((), dtype=step.dtype, device=step.device)
    return _ONES[key]


def _lean_step(opt: torch.optim.Optimizer, decoupled: bool) -> bool:
    kernel = getattr(torch, "_fused_adamw_" if decoupled else "_fused_adam_", None)
    if kernel is None:
        return False
    for group in opt.param_groups:
        if group.get("amsgrad") or group.get("capturable") or group.get("differentiable"):
            return False
        params = group["params"]
        grads = [p.grad for p in params]
        if any(g is None or g.is_sparse for g in grads):
            return False
        states = [opt.state.get(p) for p in params]
        if any(not s for s in states):  # state is created by the first stock step
            return False
        steps = [s["step"] for s in states]
        lr = group["lr"]
        for step in steps:  # a 0-dim tensor operand: adding the int 1 would wrap it in a new tensor each time
            step.add_(_one(step))
        beta1, beta2 = group["betas"]
        kernel(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [], steps,
            amsgrad=False, lr=lr, beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=None,
        )
    return True


class _LeanSteps:
    """``step``/``zero_grad`` shared by both lean optimizers; ``_decoupled`` picks the AdamW kernel."""

    _decoupled = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``set_to_none=True`` without the stock method's profiler record (a per-step Python cost)."""
        if not set_to_none:
            return super().zero_grad(set_to_none)  # type: ignore[misc]
        for group in self.param_groups:  # type: ignore[attr-defined]
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        # A GradScaler (fp16) hands the step ``found_inf``; the stock fused step honours it (skips the update).
        lean = closure is None and getattr(self, "found_inf", None) is None and self.defaults.get("fused")  # type: ignore[attr-defined]
        if lean and _lean_step(self, self._decoupled):  # type: ignore[arg-type]
            return None
        return super().step(closure)  # type: ignore[misc]


class LeanAdam(_LeanSteps, torch.optim.Adam):
    pass


class LeanAdamW(_LeanSteps, torch.optim.AdamW):
    _decoupled = True
