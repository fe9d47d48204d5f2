"""The epoch loop: one piece of code for every kind of run, a single student or a batched grid.

A :class:`Trainer` is given its parts and decides nothing about them (the builder,
:mod:`kdlab.train.build`, chose each one once and recorded why):

* the **students** (:mod:`kdlab.train.students`): one model, or a stacked grid — evaluation,
  records, the divergence check and the results;
* the **step** (:mod:`kdlab.train.steps`): closed form, autograd-free chain, batched grid or autograd;
* the **teacher source** (:mod:`kdlab.train.sources`): cached logits, online, the student's EMA, none;
* the **precision** (:mod:`kdlab.train.precision`) and **processes** (:mod:`kdlab.train.processes`) plugins;
* the **weight plan** (:mod:`kdlab.train.weights`): every method's weights for each epoch;
* **callbacks** (:mod:`kdlab.train.callbacks`): files, progress, TensorBoard, notes.

Per epoch: weights → steps (each returns its loss row; they stay tensors) → rows reduced over
processes → scheduler → divergence check → records → best epoch → callbacks.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..device import choose_threads, intra_op_threads, thread_plan
from ..device import step_macs as count_step_macs
from ..methods.base import Distiller
from .callbacks import Callback, CallbackList
from .precision import Precision
from .processes import OneProcess
from .records import FitResult
from .sources import TeacherSource
from .weights import WeightPlan


class Trainer:
    """Runs ``cfg.epochs`` epochs of ``step`` over ``students``; see the module docstring."""

    def __init__(self, *, students: Any, step: Any, source: TeacherSource, precision: Precision, processes: OneProcess,
                 optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Any, weight_plan: Optional[WeightPlan] = None,
                 callbacks: Sequence[Optional[Callback]] = (), indexer: Any = None,
                 augment_rng: Optional[torch.Generator] = None, data: Any = None,
                 choices: Optional[Dict[str, Any]] = None) -> None:
        self.students, self.step, self.source, self.precision, self.processes = students, step, source, precision, processes
        self.optimizer, self.scheduler, self.cfg = optimizer, scheduler, cfg
        self.weight_plan = weight_plan or WeightPlan.constant()
        self.callbacks = CallbackList([c for c in callbacks if c is not None])
        self.indexer, self.augment_rng, self.data = indexer, augment_rng, data
        self.choices = dict(choices or {})
        self.model: nn.Module = students.model
        self.method: Distiller = students.method
        self.methods: List[Distiller] = students.methods
        self.loaders = getattr(students, "loaders", None)
        self.best_metric = "val_acc" if data.val is not None else "test_acc"
        self.best_value, self.best_epoch, self.start_epoch, self.epoch = -1.0, 0, 1, 0
        self.histories: List[List[Dict[str, Any]]] = []
        self.step_rows: List[Tensor] = []
        self.threads: Optional[Dict[str, Any]] = None
        #: What a divergence error says about saved weights; a run folder's callback sets it.
        self.saved_note: Callable[[int], str] = lambda epoch: "the model was not saved"

    # ------------------------------------------------------------------ what the builder chose
    @property
    def fast(self) -> Any:
        """The closed form the step computes with (None: the step runs through autograd)."""
        return getattr(self.step, "fast", None) if self.step.kind in ("closed form", "autograd-free chain") else None

    @property
    def cached_logits(self) -> Optional[Tensor]:
        return self.source.table

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.precision.scaler

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return self.precision.dtype

    @property
    def student_tap(self) -> Any:
        return getattr(self.students, "tap", None)

    @property
    def teacher_tap(self) -> Any:
        return getattr(self.source, "tap", None)

    def trainable_parameters(self) -> List[Any]:
        return self.students.parameters()

    def evaluate_split(self, name: str, model: Optional[nn.Module] = None) -> Optional[Dict[str, float]]:
        return self.students.evaluate_split(name, model)

    def run_facts(self) -> Dict[str, Any]:
        """What this run trains with, for ``run.json``: the step and teacher source with the reasons
        they were chosen, precision, accumulation, denormal flushing, threads, processes."""
        cfg = self.cfg
        return {**self.precision.facts(),
                "accumulate_steps": cfg.accumulate_steps, "effective_batch_size": cfg.batch_size * cfg.accumulate_steps,
                "warmup_epochs": cfg.warmup_epochs, "flush_denormal": cfg.flush_denormal,
                "threads": self.threads, "processes": self.processes.world_size,
                "closed_form_steps": self.fast is not None, "autograd_free_steps": self.step.kind == "autograd-free chain",
                **self.choices}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything an exact resume needs (the student's weights are saved separately)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method_state": self.method.state_dict(),
            "shuffle_rng": self.indexer.generator.get_state(),
            "augment_rng": self.augment_rng.get_state() if self.augment_rng is not None else None,
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "grad_scaler": self.precision.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("method_state"):
            self.method.load_state_dict(state["method_state"])
        self.indexer.generator.set_state(state["shuffle_rng"])
        if state.get("augment_rng") is not None and self.augment_rng is not None:
            self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.start_epoch = self.epoch + 1
        self.best_value, self.best_epoch = float(state["best_value"]), int(state["best_epoch"])
        self.precision.load_state_dict(state.get("grad_scaler"))

    # ------------------------------------------------------------------ the loop
    def train_epoch(self) -> Tensor:
        """One epoch of steps; returns the loss rows, (steps, 1 + terms) (a grid: (steps, V, S, width))."""
        step = self.step
        items, total = step.epoch(self.epoch + 1)  # the epoch being trained (1-based; resume-safe)
        rows = [step(item) for item in self.callbacks.wrap_steps(self, items, total)]
        step.finish()
        return torch.stack(rows).float()

    def fit(self) -> List[FitResult]:
        """Train from ``start_epoch`` to ``cfg.epochs``; one :class:`FitResult` per student.

        The intra-op threads are the process's plan when one was made before any model ran
        (:func:`kdlab.device.plan_threads`), else chosen here from the step's size.
        """
        plan = thread_plan()
        if plan is not None:
            self.threads = plan
            return self._fit()
        macs = self.step_macs()
        threads, why = (choose_threads(macs) if macs is not None else
                        (torch.get_num_threads(), "torch's default (the data come from a DataLoader: step size not measured)"))
        self.threads = {"intra_op": threads, "reason": why, "step_multiply_adds": macs}
        with intra_op_threads(threads):
            return self._fit()

    def step_macs(self) -> Optional[int]:
        """Multiply-adds of one step's forwards (the students', and a teacher's that runs per batch);
        None when batches come from a user's DataLoader (not read ahead)."""
        macs = self.students.step_macs(self.cfg.batch_size)
        teacher = self.source.model
        if macs is not None and teacher is not None and self.source.runs_per_batch:
            macs += count_step_macs(teacher, self.data.train.x[:1], self.cfg.batch_size)
        return macs

    def _fit(self) -> List[FitResult]:
        with self.precision.fitting():
            try:
                self.processes.start(self.students.replicated())
                self.callbacks.on_fit_start(self)
                for epoch in range(self.start_epoch, self.cfg.epochs + 1):
                    self._epoch(epoch)
            finally:
                try:
                    self.callbacks.on_fit_end(self)
                    self.weight_plan.release(self.methods)  # handed back as configured
                finally:
                    self.close()
        results = self.students.results(self.histories, self.step_rows, self.best_epoch, self.best_metric)
        for r in results:  # what a study reports of its teacher side
            r.extra.update({k: self.choices[k] for k in ("teacher_source", "teacher_signals") if k in self.choices})
        return results

    def _epoch(self, epoch: int) -> None:
        self.callbacks.on_epoch_start(self, epoch)
        self.processes.start_epoch(getattr(self.loaders, "train", None), epoch)
        if self.weight_plan.apply(self.methods, epoch):  # a stage with reset_optimizer starts here
            self.optimizer.state.clear()
        t0 = time.perf_counter()
        rows = self.processes.reduce_rows(self.train_epoch(), self.indexer)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        self.students.check_finite(epoch, rows, self.saved_note(epoch))
        records = self.students.records(epoch, rows, lr, time.perf_counter() - t0)
        self.epoch = epoch
        self.step_rows.append(rows)
        for m, record in enumerate(records):
            if len(self.histories) <= m:
                self.histories.append([])
            self.histories[m].append(record)
        if len(records) == 1 and records[0][self.best_metric] > self.best_value:
            self.best_value, self.best_epoch = records[0][self.best_metric], epoch
        seconds = time.perf_counter() - t0
        for record in records:
            record.setdefault("seconds", seconds)
        self.callbacks.on_epoch_end(self, epoch, records)

    def step_losses(self, rows: Tensor) -> List[Any]:
        """Per student: the names and (steps, names) columns of one epoch's loss rows (callbacks log them)."""
        return self.students.step_losses(rows)

    @property
    def history(self) -> List[Dict[str, Any]]:
        """The single student's records (histories[0])."""
        return self.histories[0] if self.histories else []

    def close(self) -> None:
        """Remove the forward hooks put on the models (they are handed back unmodified)."""
        self.students.close()
        self.source.close()
