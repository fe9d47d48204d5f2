"""Train a grid of same-architecture students — (variant × seed) — in one batched step.

For small students one training step is mostly fixed overhead (Python, autograd, dispatch), so
training 15 students one by one costs ~15× one run. Here their parameters are stacked along a
leading (seed, variant) axis with :func:`torch.func.stack_module_state`, and one call computes
every student's logits at once — grouped matmuls for Linear/ReLU students
(:mod:`kdlab.study.grouped_mlp`), ``vmap(vmap(functional_call))`` for any other model:

* each seed has its own batch order, and the variants of a seed share its batch (the outer vmap
  runs over seeds, the inner one over variants; the grouped matmuls need no per-variant copy of
  the batch at all);
* each variant's objective runs over all its seeds at once — in closed form
  (:mod:`kdlab.losses.closed_form`) or, for a coding without one, vmapped through autograd — and
  one backward pass takes all students' gradients: student ``m``'s loss depends only on its own
  slice of the stacked parameters, so each slice receives exactly its own gradient;
* one optimizer over the stacked tensors equals independent optimizers, because Adam, AdamW and
  SGD are elementwise; gradient clipping is done per student (its own norm).

Results equal training each student with :func:`kdlab.train.fit` to float tolerance (tested).
Students with active dropout or buffers (BatchNorm) are not batched; :func:`batching_blocker`
says why and callers fall back to one-by-one training.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data import BatchIndexer, DatasetSplits, TensorData
from ..losses import DistillationObjective
from ..models.dropout import FastDropout
from ..teacher import PrecomputedTeacherLogits
from ..train.loop import FitResult, closed_form_step, epoch_record, progress_display
from ..train.optim import OPTIMIZERS, build_scheduler
from .grouped_mlp import GroupedMLP, linear_chain


def batching_blocker(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be trained in a vmapped batch (None when it can)."""
    if any(True for _ in model.buffers()):
        return "the student has buffers (e.g. BatchNorm running statistics)"
    for name, m in model.named_modules():
        if isinstance(m, (nn.Dropout, FastDropout)) and m.p > 0:
            return f"the student uses dropout ({name}, p={m.p}), which would draw different masks than one-by-one runs"
    return None


def _clip_per_student(grads: Sequence[Tensor], max_norm: float, n: int) -> None:
    """``clip_grad_norm_`` applied to each student's slice of the stacked gradients."""
    sq = sum(g.reshape(n, -1).pow(2).sum(1) for g in grads)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(n, *([1] * (g.dim() - 1))))


def fit_batched(
    students: Sequence[Sequence[nn.Module]],
    objectives: Sequence[DistillationObjective],
    distill: Sequence[bool],
    seeds: Sequence[int],
    data: DatasetSplits,
    cfg: TrainConfig,
    teacher_logits: Optional[Tensor] = None,
    before_epoch: Optional[Callable[[int, DistillationObjective], None]] = None,
    progress: Optional[bool] = None,
    desc: str = "students",
) -> List[List[FitResult]]:
    """Train ``students[v][s]`` with ``objectives[v]`` and the batch order of ``seeds[s]``.

    ``distill[v]`` says whether variant ``v`` uses the teacher's logits (``teacher_logits``, one
    row per training sample). ``before_epoch`` is applied to every distilling objective (the same
    schedule for all variants). Returns one :class:`FitResult` per student, trained in place.
    """
    V, S = len(students), len(seeds)
    if V == 0 or S == 0 or any(len(row) != S for row in students):
        raise ValueError("students must be a non-empty variants × seeds grid")
    if any(distill) and teacher_logits is None:
        raise ValueError("distilling variants need teacher_logits (one row per training sample)")
    # Seed-major stacking: the outer vmap runs over seeds (each with its own batch), the inner one
    # over variants with the batch *unbatched*, so a linear/conv layer folds the variants into its
    # output dimension instead of copying the batch once per variant.
    flat = [students[v][s] for s in range(S) for v in range(V)]
    M = V * S
    blocker = batching_blocker(flat[0])
    if blocker:
        raise ValueError(f"cannot batch these students: {blocker}")
    params, _ = stack_module_state(flat)
    base = copy.deepcopy(flat[0]).to("meta")
    shapes = {k: p.shape[1:] for k, p in params.items()}

    def one(p: Dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(base, (p, {}), (x,))

    chain = linear_chain(flat[0])
    if chain is not None:  # Linear/ReLU chains: grouped matmuls share each seed's batch across variants
        grouped = GroupedMLP(chain, S, V)
        per_seed_inputs, shared_inputs = grouped.per_seed, grouped.shared
    else:
        per_seed_inputs = vmap(vmap(one, in_dims=(0, None)), in_dims=(0, 0))  # x: (S, B, ...) -> (S, V, B, C)
        shared_inputs = vmap(vmap(one, in_dims=(0, None)), in_dims=(0, None))  # x: (N, ...) -> (S, V, N, C)

    def grid(p: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {k: t.view(S, V, *shapes[k]) for k, t in p.items()}

    def index(v: int, s: int) -> int:
        return s * V + v

    # Closed-form objectives (scratch and every coding that declares one) run for all seeds at once
    # without autograd; any other coding is vmapped over the seeds through autograd.
    signal = PrecomputedTeacherLogits(teacher_logits) if teacher_logits is not None else None
    fast = [closed_form_step(obj, signal if use_t else None, data.train.y, data.num_classes) for obj, use_t in zip(objectives, distill)]
    any_fast, any_autograd = any(f is not None for f in fast), any(f is None for f in fast)
    step_fns = [
        None if f is not None else vmap(obj, in_dims=(0, 0, 0) if use_t else (0, 0))
        for f, obj, use_t in zip(fast, objectives, distill)
    ]
    opt = OPTIMIZERS.get(cfg.optimizer.name)(list(params.values()), cfg.optimizer)
    scheduler = build_scheduler(opt, cfg.scheduler, cfg.epochs)
    indexers = [BatchIndexer(len(data.train), cfg.batch_size, shuffle=True, seed=s) for s in seeds]
    X, Y = data.train.x, data.train.y
    best_metric = "val_acc" if data.val is not None else "test_acc"
    histories: List[List[Dict[str, Any]]] = [[] for _ in range(M)]
    step_rows: List[Tensor] = []
    nan = torch.full((S,), float("nan"))

    @torch.no_grad()
    def evaluate(split: TensorData) -> tuple[Tensor, Tensor]:
        base.eval()
        g = grid(params)
        correct = torch.zeros(S, V)
        loss = torch.zeros(S, V)
        for xb, yb in zip(split.x.split(cfg.eval_batch_size), split.y.split(cfg.eval_batch_size)):
            logits = shared_inputs(g, xb)  # (S, V, n, C)
            correct += (logits.argmax(-1) == yb).sum(-1)
            loss += F.cross_entropy(logits.flatten(0, 2), yb.repeat(V * S), reduction="none").view(S, V, -1).sum(-1)
        base.train()
        n = max(len(split), 1)
        return (correct / n).T, (loss / n).T  # (V, S)

    show, epoch_logs = progress_display(progress, f"{desc} (mean)")
    bar = tqdm(total=cfg.epochs * len(indexers[0]), desc=desc, disable=not show, leave=False, unit="step", mininterval=0.5)
    try:
        for epoch in range(1, cfg.epochs + 1):
            if before_epoch is not None:
                for obj, use_t in zip(objectives, distill):
                    if use_t:
                        before_epoch(epoch, obj)
            for f, obj in zip(fast, objectives):
                if f is not None:
                    f.prepare_for(obj)
            base.train()
            t0 = time.perf_counter()
            rows: List[Tensor] = []
            for batch in zip(*(ix.epoch() for ix in indexers)):
                idx = torch.stack(batch)  # (S, B)
                flat_idx = idx.reshape(-1)
                B = idx.shape[1]
                xb = X.index_select(0, flat_idx).view(S, B, *X.shape[1:])
                logits = per_seed_inputs(grid(params), xb)  # (S, V, B, C)
                values, grads, autograd_total = [], [], None
                detached = logits.detach().contiguous() if any_fast else logits
                if any_autograd:  # labels and teacher rows, gathered once for every autograd variant
                    yb = Y.index_select(0, flat_idx).view(S, B)
                    tb = teacher_logits.index_select(0, flat_idx).view(S, B, -1) if teacher_logits is not None else None
                for v, (f, step_fn) in enumerate(zip(fast, step_fns)):
                    if f is not None:
                        vals, grad = f(detached[:, v], f.rows(flat_idx).view(S, B, -1))
                        grads.append(grad)
                    else:
                        grads.append(logits.new_zeros(S, B, logits.shape[-1]))
                        t = step_fn(logits[:, v], yb, tb) if distill[v] else step_fn(logits[:, v], yb)  # type: ignore[misc]
                        autograd_total = t["total"].sum() + (0 if autograd_total is None else autograd_total)
                        vals = torch.stack([t["total"], t["hard"], t.get("soft", nan)], -1).detach()
                    values.append(vals)
                opt.zero_grad(set_to_none=True)
                outputs, out_grads = ([logits], [torch.stack(grads, 1)]) if any_fast else ([], [])
                if autograd_total is not None:
                    outputs.append(autograd_total)
                    out_grads.append(None)
                torch.autograd.backward(outputs, out_grads)
                if cfg.grad_clip is not None:
                    _clip_per_student([p.grad for p in params.values()], cfg.grad_clip, M)
                opt.step()
                rows.append(torch.stack(values))  # (V, S, 3)
                bar.update()
            lr = opt.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            train_seconds = time.perf_counter() - t0
            epoch_rows = torch.stack(rows)  # (steps, V, S, 3)
            step_rows.append(epoch_rows)
            t1 = time.perf_counter()
            test_acc, test_loss = evaluate(data.test)
            val = evaluate(data.val) if data.val is not None else None
            eval_seconds = time.perf_counter() - t1
            for v in range(V):
                for s in range(S):
                    rec = epoch_record(
                        epoch, epoch_rows[:, v, s], test_acc[v, s], test_loss[v, s], lr,
                        objectives[v] if distill[v] else None,
                        None if val is None else (val[0][v, s], val[1][v, s]),
                    )
                    # Shared wall time, split evenly: the batch has no per-student clock.
                    rec.update(train_seconds=train_seconds / M, eval_seconds=eval_seconds / M, batched_students=M)
                    histories[index(v, s)].append(rec)
            bar.set_postfix({"mean test_acc": f"{float(test_acc.mean()):.4f}"}, refresh=False)
            if epoch_logs:
                mean = {"epoch": epoch, "loss_total": float(epoch_rows[..., 0].mean()), "test_acc": float(test_acc.mean()),
                        "seconds": time.perf_counter() - t0}
                for cb in epoch_logs:
                    cb.on_epoch_end(mean, cfg.epochs)
    finally:
        bar.close()

    steps = torch.cat(step_rows)  # (total steps, V, S, 3)
    with torch.no_grad():
        for m, model in enumerate(flat):
            model.load_state_dict({k: p[m].detach().clone() for k, p in params.items()}, strict=False)
    results: List[List[FitResult]] = []
    for v in range(V):
        row = []
        for s in range(S):
            hist = histories[index(v, s)]
            best = max(hist, key=lambda h: h[best_metric])  # first epoch reaching the max, like fit()
            row.append(FitResult(hist, steps[:, v, s].clone(), best["epoch"], best_metric))
        results.append(row)
    return results
