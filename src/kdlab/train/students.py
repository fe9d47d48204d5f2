"""What the epoch loop trains: one student, or a (variant × seed) grid of same-architecture students.

Both give the loop the same things: the trainable parameters, one metrics record per student and
epoch, the divergence check, the per-student loss columns and the results. The grid stacks its
students' parameters along a leading (seed, variant) axis (:func:`torch.func.stack_module_state`)
so one call computes every student's logits: grouped matmuls for Linear/ReLU students
(:mod:`kdlab.train.grouped_mlp`), ``vmap(vmap(functional_call))`` for any other model.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ..data import TensorData
from ..data.loaders import LoaderSplits
from ..device import step_macs
from ..features import FeatureTap
from ..logits import logits_of
from ..methods.base import Distiller, Outputs
from ..models.chain import linear_chain
from ..models.dropout import FastDropout
from .records import FitResult, check_finite, evaluate, evaluate_loader, method_record
from .grouped_mlp import GroupedMLP


class OneStudent:
    """One model trained with one method; the student's feature hooks live here."""

    def __init__(self, model: nn.Module, method: Distiller, data: Any, eval_batch_size: int,
                 device: Optional[torch.device] = None) -> None:
        self.model, self.method, self.data, self.eval_batch_size, self.device = model, method, data, eval_batch_size, device
        self.methods = [method]
        self.loaders = data if isinstance(data, LoaderSplits) else None
        self.tap: Optional[FeatureTap] = None

    def hook_features(self) -> None:
        """Hook the student's named modules the method reads (after the method's setup copied it, if it does)."""
        if self.method.needs.student_features:
            self.tap = FeatureTap(self.model, self.method.needs.student_features, role="student")

    def outputs(self, x: Tensor) -> Outputs:
        logits = logits_of(self.model(x), "student")
        return Outputs(logits, self.tap.outputs() if self.tap is not None else {})

    def parameters(self) -> List[nn.Parameter]:
        """The student's and the method's (adapters, heads) trainable parameters."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + [p for p in self.method.parameters() if p.requires_grad]

    def replicated(self) -> List[Tensor]:
        """Every tensor the processes must start from rank 0's values."""
        return [*self.model.parameters(), *self.model.buffers(), *self.method.parameters(), *self.method.buffers()]

    def step_macs(self, batch_size: int) -> Optional[int]:
        if self.loaders is not None:
            return None
        return step_macs(self.model, self.data.train.x[:1], batch_size)

    def evaluate_split(self, name: str, model: Optional[nn.Module] = None) -> Optional[Dict[str, float]]:
        """Accuracy and loss of ``model`` (default: the student) on the ``test`` or ``val`` split (None without one)."""
        split = getattr(self.data, name)
        if split is None:
            return None
        model = self.model if model is None else model
        if self.loaders is not None:
            return evaluate_loader(model, split, self.device)
        return evaluate(model, split, self.eval_batch_size)

    def records(self, epoch: int, rows: Tensor, lr: float, train_seconds: float) -> List[Dict[str, Any]]:
        t1 = time.perf_counter()
        test, val = self.evaluate_split("test"), self.evaluate_split("val")
        record = method_record(epoch, rows, self.method, None if test is None else (test["acc"], test["loss"]), lr,
                               None if val is None else (val["acc"], val["loss"]))
        record.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1)
        return [record]

    def check_finite(self, epoch: int, rows: Tensor, kept: str) -> None:
        check_finite(rows, ["total", *self.method.term_weights()], epoch, self.parameters(), kept)

    def step_losses(self, rows: Tensor) -> List[Tuple[List[str], Tensor]]:
        return [(["total", *self.method.term_weights()], rows)]

    def results(self, histories: List[List[Dict[str, Any]]], step_rows: List[Tensor], best_epoch: int,
                best_metric: str) -> List[FitResult]:
        width = 1 + len(self.method.term_weights())
        steps = torch.cat(step_rows) if step_rows else torch.empty(0, width)
        return [FitResult(histories[0] if histories else [], steps, best_epoch, best_metric)]

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()


def grid_blocker(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be trained in a stacked grid (None when it can)."""
    if any(True for _ in model.buffers()):
        return "the student has buffers (e.g. BatchNorm running statistics)"
    for name, m in model.named_modules():
        if isinstance(m, (nn.Dropout, FastDropout)) and m.p > 0:
            return f"the student uses dropout ({name}, p={m.p}), which would draw different masks than one-by-one runs"
    return None


def grid_cost_reason(model: nn.Module) -> Optional[str]:
    """Why stacking ``model`` would not pay (None when it does): a rule on the model and its device only,
    never on the machine's load, so the same command always trains the same way.

    MLPs stack into (grouped) matmuls, 4–5× faster than one by one. Convolutional students go through
    ``vmap(functional_call)``, whose batched convolutions on a CPU measured 1.1–1.6× slower than the
    same students one at a time (``benchmarks/batched_cnn.md``); on a GPU they stack.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu" and any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules()):
        return "the student has convolutions, whose stacked (vmap) form is slower on a CPU than one student at a time"
    return None


class StudentGrid:
    """A (variant × seed) grid of students of one architecture, stacked seed-major (student ``s·V + v``).

    Seed-major stacking: the outer vmap runs over seeds (each with its own batch), the inner one over
    variants with the batch *unbatched*, so a linear/conv layer folds the variants into its output
    dimension instead of copying the batch once per variant. ``methods[v]`` trains variant ``v``.
    When a method reads student features (attention transfer), a :class:`FeatureTap` on the stacked
    forward's model hands back every student's tapped outputs with its logits.
    """

    def __init__(self, students: Sequence[Sequence[nn.Module]], methods: Sequence[Distiller], seeds: Sequence[int],
                 data: Any, eval_batch_size: int) -> None:
        S, V = len(seeds), len(students)
        if V == 0 or S == 0 or any(len(row) != S for row in students) or len(methods) != V:
            raise ValueError("students must be a non-empty variants × seeds grid with one method per variant")
        self.flat = [students[v][s] for s in range(S) for v in range(V)]
        blocker = grid_blocker(self.flat[0])
        if blocker:
            raise ValueError(f"cannot batch these students: {blocker}")
        self.V, self.S, self.M = V, S, V * S
        self.methods, self.method = list(methods), methods[0]
        self.seeds, self.data, self.eval_batch_size = list(seeds), data, eval_batch_size
        self.params, _ = stack_module_state(self.flat)
        self.base = copy.deepcopy(self.flat[0]).to("meta")
        self.model = self.base  # what the loop puts in train/eval mode
        self.shapes = {k: p.shape[1:] for k, p in self.params.items()}
        self.width = 1 + max(len(m.term_weights()) for m in methods)
        base = self.base

        def one(p: Dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(base, (p, {}), (x,))

        # the student features the variants' methods read (feature methods the grid may train: grid_method_blocker)
        self.features = tuple(dict.fromkeys(n for m in methods if not m.needs.logits_only for n in m.needs.student_features))
        self.tap = FeatureTap(base, self.features, role="student") if self.features else None
        tap = self.tap

        def one_tapped(p: Dict[str, Tensor], x: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
            out = functional_call(base, (p, {}), (x,))
            return out, tap.outputs()  # type: ignore[union-attr]

        # Linear/ReLU chains: grouped matmuls share each seed's batch across variants (they expose no
        # module outputs, so a grid reading features takes the vmapped path, which computes the same logits)
        chain = linear_chain(self.flat[0]) if tap is None else None
        self.grouped = chain is not None
        self.per_seed_inputs: Callable[..., Any]
        if chain is not None:
            grouped = GroupedMLP(chain, S, V)
            self.per_seed_inputs, self.shared_inputs = grouped.per_seed, grouped.shared
        else:
            # x: (S, B, ...) -> (S, V, B, C); with features also {name: (S, V, B, ...)}
            self.per_seed_inputs = vmap(vmap(one if tap is None else one_tapped, in_dims=(0, None)), in_dims=(0, 0))
            self.shared_inputs = vmap(vmap(one, in_dims=(0, None)), in_dims=(0, None))  # x: (N, ...) -> (S, V, N, C)

    def grid(self, p: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        return {k: t.view(self.S, self.V, *self.shapes[k]) for k, t in (p or self.params).items()}

    def parameters(self) -> List[Tensor]:
        return list(self.params.values())

    def replicated(self) -> List[Tensor]:
        return []

    def step_macs(self, batch_size: int) -> Optional[int]:
        """Multiply-adds of one batched step: every student's forward on its batch."""
        return step_macs(self.flat[0], self.data.train.x[:1], batch_size) * self.M

    @torch.no_grad()
    def _evaluate(self, split: TensorData) -> Tuple[Tensor, Tensor]:
        S, V = self.S, self.V
        self.base.eval()
        g = self.grid()
        device = next(iter(self.params.values())).device
        correct = torch.zeros(S, V, device=device)
        loss = torch.zeros(S, V, device=device)
        bs = self.eval_batch_size
        for xb, yb in zip(split.x.split(bs), split.y.split(bs)):
            logits = self.shared_inputs(g, xb)  # (S, V, n, C)
            correct += (logits.argmax(-1) == yb).sum(-1)
            loss += F.cross_entropy(logits.flatten(0, 2), yb.repeat(V * S), reduction="none").view(S, V, -1).sum(-1)
        self.base.train()
        n = max(len(split), 1)
        return (correct / n).T, (loss / n).T  # (V, S)

    def records(self, epoch: int, rows: Tensor, lr: float, train_seconds: float) -> List[Dict[str, Any]]:
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

    def check_finite(self, epoch: int, rows: Tensor, kept: str) -> None:
        """Every student's losses and weights, once per epoch; the error names the student."""
        for v, method in enumerate(self.methods):
            names = ["total", *method.term_weights()]
            for s in range(self.S):
                m = s * self.V + v
                check_finite(rows[:, v, s, : len(names)], names, epoch, (p[m] for p in self.params.values()),
                             "the students were not saved", f" (variant {v + 1}, seed {self.seeds[s]})")

    def step_losses(self, rows: Tensor) -> List[Tuple[List[str], Tensor]]:
        """Per student (seed-major, like the records): its loss names and (steps, names) rows."""
        out = []
        for s in range(self.S):
            for v, m in enumerate(self.methods):
                names = ["total", *m.term_weights()]
                out.append((names, rows[:, v, s, : len(names)]))
        return out

    def results(self, histories: List[List[Dict[str, Any]]], step_rows: List[Tensor], best_epoch: int,
                best_metric: str) -> List[FitResult]:
        """One FitResult per student, seed-major; the students are updated in place."""
        steps = torch.cat(step_rows) if step_rows else torch.empty(0, self.V, self.S, self.width)
        with torch.no_grad():
            for m, model in enumerate(self.flat):
                model.load_state_dict({k: p[m].detach().clone() for k, p in self.params.items()}, strict=False)
        out = []
        for s in range(self.S):
            for v, method in enumerate(self.methods):
                hist = histories[s * self.V + v]
                best = max(hist, key=lambda h: h[best_metric])  # first epoch reaching the max
                width = 1 + len(method.term_weights())
                out.append(FitResult(hist, steps[:, v, s, :width].clone(), best["epoch"], best_metric))
        return out

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()
