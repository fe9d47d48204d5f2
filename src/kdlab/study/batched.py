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

from ..device import step_macs
from ..config import TrainConfig
from ..data import BatchIndexer, DatasetSplits, TensorData
from ..methods.base import Batch, Distiller, Outputs
from ..models.dropout import FastDropout
from ..train.callbacks import Callback, CallbackList
from ..train.optim import OPTIMIZERS, build_scheduler
from ..train.weights import WeightPlan
from ..train.records import FitResult, check_finite, method_record
from ..train.trainer import Trainer
from ..models.chain import linear_chain
from .grouped_mlp import GroupedMLP


def batching_blocker(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be trained in a vmapped batch (None when it can)."""
    if any(True for _ in model.buffers()):
        return "the student has buffers (e.g. BatchNorm running statistics)"
    for name, m in model.named_modules():
        if isinstance(m, (nn.Dropout, FastDropout)) and m.p > 0:
            return f"the student uses dropout ({name}, p={m.p}), which would draw different masks than one-by-one runs"
    return None


def train_blocker(cfg: TrainConfig) -> Optional[str]:
    """Why these train settings cannot be batched (None when they can): the batched step is fp32,
    one optimizer step per batch, default memory format."""
    if cfg.precision != "fp32" or cfg.accumulate_steps != 1 or getattr(cfg, "channels_last", False):
        return (f"train.precision={cfg.precision}, accumulate_steps={cfg.accumulate_steps}, channels_last={cfg.channels_last} "
                "are supported one student at a time only (the batched step is fp32, one step per batch)")
    return None


def _clip_per_student(grads: Sequence[Tensor], max_norm: float, n: int) -> None:
    """``clip_grad_norm_`` applied to each student's slice of the stacked gradients."""
    sq = sum(g.reshape(n, -1).pow(2).sum(1) for g in grads)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(n, *([1] * (g.dim() - 1))))


class BatchedTrainer(Trainer):
    """The trainer's epoch loop over a (variant × seed) grid of students trained in one step.

    ``methods[v]`` trains variant ``v``; methods that read the teacher get ``teacher_logits``
    (one row per training sample). Only the step, the evaluation and the results differ from
    :class:`Trainer`; epochs, schedules and callbacks are the same code.
    """

    def __init__(
        self,
        students: Sequence[Sequence[nn.Module]],
        methods: Sequence[Distiller],
        seeds: Sequence[int],
        data: DatasetSplits,
        cfg: TrainConfig,
        teacher_logits: Optional[Tensor] = None,
        callbacks: Sequence[Callback] = (),
        weight_plan: Optional[WeightPlan] = None,
    ) -> None:
        S = len(seeds)
        V = len(students)
        if V == 0 or S == 0 or any(len(row) != S for row in students) or len(methods) != V:
            raise ValueError("students must be a non-empty variants × seeds grid with one method per variant")
        if any(m.needs.teacher for m in methods) and teacher_logits is None:
            raise ValueError("distilling variants need teacher_logits (one row per training sample)")
        for m in methods:
            if not m.needs.logits_only or m.needs.indices:
                raise ValueError(f"cannot batch {type(m).__name__}: it needs features or sample indices")
        # Seed-major stacking: the outer vmap runs over seeds (each with its own batch), the inner one
        # over variants with the batch *unbatched*, so a linear/conv layer folds the variants into its
        # output dimension instead of copying the batch once per variant.
        self.flat = [students[v][s] for s in range(S) for v in range(V)]
        blocker = batching_blocker(self.flat[0]) or train_blocker(cfg)
        if blocker:
            raise ValueError(f"cannot batch these students: {blocker}")
        self.V, self.S, self.M = V, S, V * S
        self.methods, self.method = list(methods), methods[0]
        self.data, self.cfg, self.seeds = data, cfg, list(seeds)
        self.callbacks = CallbackList(callbacks)
        self.weight_plan = weight_plan or WeightPlan.constant()
        self.params, _ = stack_module_state(self.flat)
        self.base = copy.deepcopy(self.flat[0]).to("meta")
        self.shapes = {k: p.shape[1:] for k, p in self.params.items()}
        base = self.base

        def one(p: Dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(base, (p, {}), (x,))

        chain = linear_chain(self.flat[0])
        if chain is not None:  # Linear/ReLU chains: grouped matmuls share each seed's batch across variants
            grouped = GroupedMLP(chain, S, V)
            self.per_seed_inputs, self.shared_inputs = grouped.per_seed, grouped.shared
        else:
            self.per_seed_inputs = vmap(vmap(one, in_dims=(0, None)), in_dims=(0, 0))  # x: (S, B, ...) -> (S, V, B, C)
            self.shared_inputs = vmap(vmap(one, in_dims=(0, None)), in_dims=(0, None))  # x: (N, ...) -> (S, V, N, C)
        # Closed-form methods run for all seeds at once without autograd; any other method is
        # vmapped over the seeds through autograd.
        self.teacher_logits = teacher_logits
        Y = data.train.y
        self.fast = [m.fast_path(Y, data.num_classes, teacher_logits if m.needs.teacher else None) for m in methods]
        self.step_fns = [None if f is not None else vmap(_terms_fn(m), in_dims=(0, 0, 0 if m.needs.teacher else None))
                         for f, m in zip(self.fast, methods)]
        self.width = 1 + max(len(m.term_weights()) for m in methods)
        self.optimizer = OPTIMIZERS.get(cfg.optimizer.name)(list(self.params.values()), cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, cfg.epochs, cfg.warmup_epochs)
        self.indexers = [BatchIndexer(len(data.train), cfg.batch_size, shuffle=True, seed=s) for s in seeds]
        self.best_metric = "val_acc" if data.val is not None else "test_acc"
        self.best_value, self.best_epoch, self.start_epoch, self.epoch = -1.0, 0, 1, 0
        self.histories: List[List[Dict[str, Any]]] = []
        self.step_rows: List[Tensor] = []
        self.student_tap = self.teacher_tap = None

    def step_macs(self) -> Optional[int]:
        """Multiply-adds of one batched step: every student's forward on its batch."""
        return step_macs(self.flat[0], self.data.train.x[:1], self.cfg.batch_size) * self.M

    def _grid(self, p: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {k: t.view(self.S, self.V, *self.shapes[k]) for k, t in p.items()}

    def train_epoch(self) -> Tensor:
        """One epoch for every student; returns (steps, V, S, width) loss rows (NaN-padded)."""
        S, M, params = self.S, self.M, self.params
        X, Y = self.data.train.x, self.data.train.y
        fast, step_fns, methods, opt = self.fast, self.step_fns, self.methods, self.optimizer
        any_fast, any_autograd = any(f is not None for f in fast), any(f is None for f in fast)
        for f, m in zip(fast, methods):
            if f is not None:
                f.prepare_for(m)
        self.base.train()
        rows: List[Tensor] = []
        for batch in self._steps(zip(*(ix.epoch() for ix in self.indexers)), len(self.indexers[0])):
            idx = torch.stack(batch)  # (S, B)
            flat_idx = idx.reshape(-1).to(X.device)
            B = idx.shape[1]
            xb = X.index_select(0, flat_idx).view(S, B, *X.shape[1:])
            logits = self.per_seed_inputs(self._grid(params), xb)  # (S, V, B, C)
            values, grads, autograd_total = [], [], None
            detached = logits.detach().contiguous() if any_fast else logits
            if any_autograd:  # labels and teacher rows, gathered once for every autograd variant
                yb = Y.index_select(0, flat_idx).view(S, B)
                tl = self.teacher_logits
                tb = tl.index_select(0, flat_idx).view(S, B, -1) if tl is not None else None
            for v, (f, step_fn, m) in enumerate(zip(fast, step_fns, methods)):
                if f is not None:
                    vals, grad = f(detached[:, v], f.rows(flat_idx).view(S, B, -1))
                    vals = vals.narrow(-1, 0, 1 + len(m.term_weights()))  # CE's closed form also reports a zero soft term
                    grads.append(grad)
                else:
                    grads.append(logits.new_zeros(S, B, logits.shape[-1]))
                    terms = step_fn(logits[:, v], yb, tb)  # type: ignore[misc]
                    total = _total_of(m, terms)
                    autograd_total = total.sum() + (0 if autograd_total is None else autograd_total)
                    vals = torch.stack([total, *(terms[k] for k in m.term_weights())], -1).detach()
                values.append(_pad(vals, self.width))
            opt.zero_grad(set_to_none=True)
            outputs, out_grads = ([logits], [torch.stack(grads, 1)]) if any_fast else ([], [])
            if autograd_total is not None:
                outputs.append(autograd_total)
                out_grads.append(None)
            torch.autograd.backward(outputs, out_grads)
            if self.cfg.grad_clip is not None:
                _clip_per_student([p.grad for p in params.values()], self.cfg.grad_clip, M)
            opt.step()
            rows.append(torch.stack(values))  # (V, S, width)
        return torch.stack(rows)

    @torch.no_grad()
    def _evaluate(self, split: TensorData) -> tuple[Tensor, Tensor]:
        S, V = self.S, self.V
        self.base.eval()
        g = self._grid(self.params)
        device = next(iter(self.params.values())).device
        correct = torch.zeros(S, V, device=device)
        loss = torch.zeros(S, V, device=device)
        bs = self.cfg.eval_batch_size
        for xb, yb in zip(split.x.split(bs), split.y.split(bs)):
            logits = self.shared_inputs(g, xb)  # (S, V, n, C)
            correct += (logits.argmax(-1) == yb).sum(-1)
            loss += F.cross_entropy(logits.flatten(0, 2), yb.repeat(V * S), reduction="none").view(S, V, -1).sum(-1)
        self.base.train()
        n = max(len(split), 1)
        return (correct / n).T, (loss / n).T  # (V, S)

    def epoch_records(self, epoch: int, rows: Tensor, lr: float, train_seconds: float) -> List[Dict[str, Any]]:
        """One record per student, seed-major like the stacked parameters."""
        t1 = time.perf_counter()
        test_acc, test_loss = self._evaluate(self.data.test)
        val = self._evaluate(self.data.val) if self.data.val is not None else None
        eval_seconds = time.perf_counter() - t1
        records = []
        for s in range(self.S):
            for v, m in enumerate(self.methods):
                rec = method_record(epoch, rows[:, v, s], m, (test_acc[v, s], test_loss[v, s]), lr,
                                    None if val is None else (val[0][v, s], val[1][v, s]))
                # Shared wall time, split evenly: the batch has no per-student clock.
                rec.update(train_seconds=train_seconds / self.M, eval_seconds=eval_seconds / self.M, batched_students=self.M)
                records.append(rec)
        return records

    def step_losses(self, rows: Tensor) -> List[tuple]:
        """Per student (seed-major, like the records): its loss names and (steps, names) rows."""
        out = []
        for s in range(self.S):
            for v, m in enumerate(self.methods):
                names = ["total", *m.term_weights()]
                out.append((names, rows[:, v, s, : len(names)]))
        return out

    def check_finite(self, epoch: int, rows: Tensor) -> None:
        """Every student's losses and weights, once per epoch; the error names the student."""
        for v, method in enumerate(self.methods):
            names = ["total", *method.term_weights()]
            for s in range(self.S):
                m = s * self.V + v
                check_finite(rows[:, v, s, : len(names)], names, epoch, (p[m] for p in self.params.values()),
                             "the students were not saved", f" (variant {v + 1}, seed {self.seeds[s]})")

    def results(self) -> List[FitResult]:
        """One FitResult per student, seed-major; the students are updated in place."""
        steps = torch.cat(self.step_rows) if self.step_rows else torch.empty(0, self.V, self.S, self.width)
        with torch.no_grad():
            for m, model in enumerate(self.flat):
                model.load_state_dict({k: p[m].detach().clone() for k, p in self.params.items()}, strict=False)
        out = []
        for s in range(self.S):
            for v, method in enumerate(self.methods):
                hist = self.histories[s * self.V + v]
                best = max(hist, key=lambda h: h[self.best_metric])  # first epoch reaching the max
                width = 1 + len(method.term_weights())
                out.append(FitResult(hist, steps[:, v, s, :width].clone(), best["epoch"], self.best_metric))
        return out


def _terms_fn(method: Distiller) -> Callable[..., Dict[str, Tensor]]:
    """The method as a function of tensors only, so vmap can batch it over seeds."""

    def terms(s: Tensor, y: Tensor, t: Optional[Tensor] = None) -> Dict[str, Tensor]:
        return method(Batch(s, y), Outputs(s), None if t is None else Outputs(t))

    return terms


def _total_of(method: Distiller, terms: Dict[str, Tensor]) -> Tensor:
    total: Any = 0
    for name, w in method.weights().items():
        if w != 0:
            total = total + w * terms[name]
    return total if isinstance(total, Tensor) else sum(terms.values()) * 0.0


def _pad(values: Tensor, width: int) -> Tensor:
    """Pad the last dim with NaN to ``width`` (methods log different numbers of terms)."""
    if values.shape[-1] == width:
        return values
    return torch.cat([values, values.new_full((*values.shape[:-1], width - values.shape[-1]), float("nan"))], -1)


def fit_batched(
    students: Sequence[Sequence[nn.Module]],
    methods: Sequence[Distiller],
    seeds: Sequence[int],
    data: DatasetSplits,
    cfg: TrainConfig,
    teacher_logits: Optional[Tensor] = None,
    callbacks: Sequence[Callback] = (),
    weight_plan: Optional[WeightPlan] = None,
) -> List[List[FitResult]]:
    """Train ``students[v][s]`` with ``methods[v]`` and the batch order of ``seeds[s]``; returns
    ``results[v][s]`` and updates the students in place."""
    trainer = BatchedTrainer(students, methods, seeds, data, cfg, teacher_logits, callbacks, weight_plan)
    flat = trainer.fit()
    V = len(methods)
    return [[flat[s * V + v] for s in range(len(seeds))] for v in range(V)]
