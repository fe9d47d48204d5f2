"""One trainer for every method: teacher training, scratch students, KD, feature methods.

The trainer knows the :class:`~kdlab.methods.base.Distiller` interface and nothing else about a
method. Per run it decides, once, how the teacher reaches the method:

* the method needs only teacher logits and the data are not augmented: the teacher's training-set
  logits are computed once (or handed in, e.g. shared by a study) and read by index;
* otherwise the teacher runs on every (augmented) batch, under ``no_grad`` and in eval mode, with
  forward hooks collecting the named features the method asked for.

and how a step is computed:

* the method's closed form when it offers one (:meth:`Distiller.fast_path`): one ``index_select``
  for the tabulated label/teacher rows and one ``logits.backward(grad)``, no loss graph;
  a plain Linear/ReLU chain (the MLPs) also skips autograd's graph: :class:`kdlab.models.chain.ChainStep`
  writes its backward out as the same matmuls (same gradients, tested): the MNIST student's epoch
  took 0.28-0.29 s instead of 0.36-0.40 s (Intel Xeon, AMX; run alternately in one process);
* otherwise ``total = Σ weight · term`` through autograd.

Mixed precision (``train.precision``), gradient accumulation (``train.accumulate_steps``) and
``channels_last`` use the autograd path only: with any of them on, the closed form is not used
(``self.fast`` is None). The forward passes run under :func:`torch.autocast`; logits and features
are cast to fp32 before the method, so softmax/KL/CE terms are always fp32. fp16 steps go through a
``GradScaler`` (gradients unscaled before clipping; its state is part of :meth:`Trainer.state_dict`).
``train.flush_denormal`` flushes subnormal floats during :meth:`Trainer.fit`, on every intra-op
thread (:func:`kdlab.device.set_flush_denormal`), and restores the previous mode afterwards.

Loss terms stay tensors during the epoch and become floats once at its end; checkpoints, metrics,
progress and schedules are callbacks (:mod:`kdlab.train.callbacks`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import BatchIndexer, DatasetSplits
from ..data.loaders import LoaderSplits, loader_batches
from ..device import (autocast_dtype, choose_threads, flush_denormal_enabled, intra_op_threads, precision_name,
                      set_flush_denormal, step_macs, thread_plan)
from ..logits import logits_of
from ..models.chain import ChainStep
from ..methods.base import Batch, Distiller, Outputs, RunContext
from ..teacher import FrozenTeacher
from . import distributed
from .callbacks import Callback, CallbackList
from .optim import OPTIMIZERS, build_scheduler
from .records import FitResult, NonFiniteLossError, check_finite, evaluate, evaluate_loader, method_record  # noqa: F401
from .weights import WeightPlan

Augment = Callable[[Tensor, Tensor, torch.Generator], "tuple[Tensor, Tensor]"]
_Item = TypeVar("_Item")


class Trainer:
    """Trains ``model`` with ``method`` on ``data`` for ``cfg.epochs`` epochs.

    ``teacher`` is a :class:`FrozenTeacher` (or None for methods without one); ``teacher_logits``
    are precomputed training-set logits that spare the teacher's forward (studies share them).
    ``augment(x, y, generator)`` transforms each batch (then the teacher runs online).
    ``weight_plan`` gives the method its weights and T each epoch (schedules, stages, its warm-up).
    """

    dist: Optional[distributed.Context] = None  # the torchrun process group; subclasses that skip __init__ run alone

    def __init__(
        self,
        model: nn.Module,
        method: Distiller,
        data: DatasetSplits | LoaderSplits,
        cfg: TrainConfig,
        *,
        seed: int = 0,
        teacher: Optional[FrozenTeacher] = None,
        teacher_logits: Optional[Tensor] = None,
        augment: Optional[Augment] = None,
        callbacks: Sequence[Callback] = (),
        device: Optional[torch.device] = None,
        weight_plan: Optional[WeightPlan] = None,
    ) -> None:
        self.model, self.method, self.data, self.cfg = model, method, data, cfg
        self.methods = [method]
        self.weight_plan = weight_plan or WeightPlan.constant()
        self.seed = seed
        self.teacher, self.augment = teacher, augment
        self.callbacks = CallbackList(callbacks)
        self.device = device
        if device is not None:
            for part in (model, method, teacher):
                if part is not None:
                    part.to(device)
        # A user's DataLoader may augment per sample, so its teacher always runs online.
        self.loaders = data if isinstance(data, LoaderSplits) else None
        needs = method.needs
        if needs.teacher and teacher is None and teacher_logits is None:
            raise ValueError("this method needs a teacher: pass teacher= or teacher_logits=")
        self.cached_logits: Optional[Tensor] = None
        self.dist = distributed.context()  # None in one process; see kdlab.train.distributed
        if needs.teacher_logits and needs.logits_only and augment is None and self.loaders is None:
            if teacher_logits is None:
                assert teacher is not None
                teacher_logits = (teacher.logits_for(data.train.x, cfg.eval_batch_size, members=needs.teacher_members) if self.dist is None
                                  else self.dist.teacher_logits(teacher, data.train.x, cfg.eval_batch_size, needs.teacher_members))
            self.cached_logits = teacher_logits
        elif needs.teacher and teacher is None:
            raise ValueError("features or augmented batches need the teacher model itself, not cached logits")
        n_train = len(data.train.dataset) if self.loaders is not None else len(data.train)  # type: ignore[union-attr,arg-type]
        self.indexer = BatchIndexer(n_train, cfg.batch_size, shuffle=True, seed=seed)
        if self.dist is not None:  # shard each global batch, all-reduce gradients, broadcast rank 0's weights
            self.dist.attach(self)
        # before any hook is on the models: a method may copy the student (an EMA teacher)
        method.setup(RunContext(n_train, seed, model, getattr(teacher, "model", None), self._val_accuracy()))
        self.student_tap = self.teacher_tap = None
        if needs.student_features or needs.teacher_features:
            from ..features import FeatureTap

            self.student_tap = FeatureTap(model, needs.student_features, role="student")
            if needs.teacher_features:
                assert teacher is not None
                self.teacher_tap = FeatureTap(teacher.model, needs.teacher_features, role="teacher")
        self.augment_rng = torch.Generator().manual_seed(seed + 7919)
        if method.lazy or not needs.logits_only:  # build adapters; bad layer pairs fail before any training
            self._build_lazy_parts()
        self.optimizer = OPTIMIZERS.get(cfg.optimizer.name)(self.trainable_parameters(), cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, cfg.epochs, cfg.warmup_epochs)
        self._setup_precision(model, device)
        in_memory = augment is None and self.loaders is None and self.plain_steps
        self.fast = method.fast_path(data.train.y, data.num_classes, self.cached_logits) if in_memory else None  # type: ignore[union-attr]
        self.best_metric = "val_acc" if data.val is not None else "test_acc"
        self.best_value, self.best_epoch, self.start_epoch = -1.0, 0, 1
        self.histories: List[List[Dict[str, Any]]] = []
        self.step_rows: List[Tensor] = []
        self.epoch = 0
        #: What a divergence error says about saved weights; a run folder's callback sets it.
        self.saved_note: Callable[[int], str] = lambda epoch: "the model was not saved"

    def _setup_precision(self, model: nn.Module, device: Optional[torch.device]) -> None:
        """Autocast dtype, GradScaler and memory format for this run (see the module docstring)."""
        cfg = self.cfg
        dev = device or next((p.device for p in model.parameters()), torch.device("cpu"))
        self.amp_device, self.amp_dtype = dev.type, autocast_dtype(cfg.precision, dev)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        self.channels_last = bool(getattr(cfg, "channels_last", False))
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            if self.teacher is not None and self.cached_logits is None:  # it runs on every batch
                self.teacher.use_channels_last()
        #: One optimizer step per batch in fp32: the closed form may be used.
        self.plain_steps = self.amp_dtype is None and cfg.accumulate_steps == 1 and not self.channels_last

    def run_facts(self) -> Dict[str, Any]:
        """What this run trains with, for ``run.json``: precision, accumulation, denormal flushing."""
        dtype = precision_name(self.amp_dtype)
        return {"precision": {"setting": self.cfg.precision, "autocast": dtype, "grad_scaler": self.scaler.is_enabled(),
                              "device": self.amp_device},
                "accumulate_steps": self.cfg.accumulate_steps,
                "effective_batch_size": self.cfg.batch_size * self.cfg.accumulate_steps,
                "warmup_epochs": self.cfg.warmup_epochs, "flush_denormal": self.cfg.flush_denormal,
                "flush_denormal_supported": getattr(self, "flush_denormal_supported", None),
                # False: only the calling thread flushes (an OpenMP runtime kdlab cannot reach)
                "flush_denormal_all_threads": getattr(self, "flush_denormal_all_threads", None),
                "threads": getattr(self, "threads", None),
                "channels_last": self.channels_last, "closed_form_steps": self.fast is not None,
                "autograd_free_steps": self.fast is not None and ChainStep.of(self.model) is not None}

    # ------------------------------------------------------------------ parts a method owns
    def trainable_parameters(self) -> List[nn.Parameter]:
        """The student's and the method's (adapters, heads) trainable parameters."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return params + [p for p in self.method.parameters() if p.requires_grad]

    @torch.no_grad()
    def _build_lazy_parts(self) -> None:
        """Let the method build its shape-dependent parts (adapters) from one probe batch.

        Both models run in eval mode so BatchNorm statistics do not see the probe.
        """
        was = self.model.training
        self.model.eval()
        try:
            if self.loaders is not None:
                x, y, idx = next(loader_batches(self.loaders.train, self.device))
            else:
                train = self.data.train  # type: ignore[union-attr]
                idx = torch.arange(min(2, len(train)), device=train.x.device)
                x, y = train.x.index_select(0, idx), train.y.index_select(0, idx)
            batch = Batch(x, y, idx)
            self.method.build(batch, self._student_outputs(batch.x), self._teacher_outputs(batch))
        finally:
            self.model.train(was)

    def _val_accuracy(self) -> Optional[Callable[[nn.Module], float]]:
        """Accuracy of any model on the validation split (methods weighting teachers use it)."""
        if self.data.val is None:
            return None
        return lambda m: self.evaluate_split("val", m)["acc"]  # type: ignore[index]

    def _student_outputs(self, x: Tensor) -> Outputs:
        logits = logits_of(self.model(x), "student")
        return Outputs(logits, self.student_tap.outputs() if self.student_tap is not None else {})

    def _teacher_outputs(self, batch: Batch) -> Optional[Outputs]:
        if not self.method.needs.teacher:
            return None
        if self.cached_logits is not None:
            return Outputs(self.cached_logits.index_select(0, batch.index))  # type: ignore[arg-type]
        assert self.teacher is not None
        logits = self.teacher.member_logits(batch.x) if self.method.needs.teacher_members else self.teacher(batch.x)
        return Outputs(logits, self.teacher_tap.outputs() if self.teacher_tap is not None else {})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything an exact resume needs (the student's weights are saved separately)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method_state": self.method.state_dict(),
            "shuffle_rng": self.indexer.generator.get_state(),
            "augment_rng": self.augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("method_state"):
            self.method.load_state_dict(state["method_state"])
        self.indexer.generator.set_state(state["shuffle_rng"])
        if state.get("augment_rng") is not None:
            self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch = int(state["epoch"])
        self.start_epoch = self.epoch + 1
        self.best_value, self.best_epoch = float(state["best_value"]), int(state["best_epoch"])
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])

    # ------------------------------------------------------------------ training
    def _batches(self) -> Iterator[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        """(x, y, sample indices) for one epoch: a user's loader, or in-memory tensors by index."""
        if self.loaders is not None:
            yield from loader_batches(self.loaders.train, self.device)
            return
        X, Y = self.data.train.x, self.data.train.y  # type: ignore[union-attr]
        for idx in self.indexer.epoch():
            idx = idx.to(X.device)
            yield X.index_select(0, idx), Y.index_select(0, idx), idx

    def _steps(self, steps: Iterable[_Item], total: Optional[int]) -> Iterable[_Item]:
        """The epoch's steps as the callbacks see them (a progress display counts them; see
        :meth:`Callback.wrap_steps`): unchanged, at no cost per step, when no callback wraps them."""
        return self.callbacks.wrap_steps(self, steps, total)

    def _steps_per_epoch(self) -> Optional[int]:
        """Steps in one epoch: the batch indexer's, or the user's loader's length (None when it has none)."""
        if self.loaders is None:
            return len(self.indexer)
        try:
            return len(self.loaders.train)
        except TypeError:  # an iterable-style dataset
            return None

    def train_epoch(self) -> Tensor:
        """One epoch of steps; returns the (steps, 1 + terms) loss rows."""
        model, method, optimizer, fast = self.model, self.method, self.optimizer, self.fast
        clip = self.cfg.grad_clip
        clip_params = self.trainable_parameters() if clip is not None else []
        model.train()
        rows: List[Tensor] = []
        if fast is not None:  # closed form: one backward entry, no loss graph
            X = self.data.train.x  # type: ignore[union-attr]
            n_values = 1 + len(method.term_weights())
            fast.prepare_for(method)
            chain = ChainStep.of(model)  # a Linear/ReLU chain: its backward written out, no autograd graph
            for idx in self._steps(self.indexer.epoch(), len(self.indexer)):
                idx = idx.to(X.device)
                if chain is not None:
                    values = chain.step(X.index_select(0, idx), lambda logits: fast(logits, fast.rows(idx)))
                else:
                    logits = logits_of(model(X.index_select(0, idx)), "student")
                    values, grad = fast(logits.detach(), fast.rows(idx))
                    optimizer.zero_grad(set_to_none=True)
                    logits.backward(grad)
                if self.dist is not None:
                    self.dist.after_backward(self)
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(clip_params, clip)
                optimizer.step()
                rows.append(values.narrow(-1, 0, n_values))
            return torch.stack(rows).float()
        acc, amp, scaler = self.cfg.accumulate_steps, self.amp_dtype, self.scaler
        nominal, micro, seen = self.cfg.batch_size * acc, 0, 0
        for xb, yb, idx in self._steps(self._batches(), self._steps_per_epoch()):
            if self.augment is not None:
                xb, yb = self.augment(xb, yb, self.augment_rng)
            if self.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            batch = Batch(xb, yb, idx)
            with torch.autocast(self.amp_device, dtype=amp, enabled=amp is not None):
                student, teacher = self._student_outputs(xb), self._teacher_outputs(batch)
            if amp is not None:  # loss terms in fp32
                student, teacher = _float_outputs(student), _float_outputs(teacher)
            terms = method(batch, student, teacher)
            total = method.total(terms)
            if micro == 0:
                optimizer.zero_grad(set_to_none=True)
            # Accumulation: each micro-batch's mean loss weighted by its share of the full batch.
            scaler.scale(total if acc == 1 else total * (len(yb) / nominal)).backward()
            micro, seen = micro + 1, seen + len(yb)
            if micro == acc:
                self._optimizer_step(clip, clip_params, 1.0 if acc == 1 else seen / nominal)
                micro = seen = 0
            rows.append(method.term_values(terms, total))
        if micro:  # a short last group: its gradient is rescaled to the mean over its samples
            self._optimizer_step(clip, clip_params, seen / nominal)
        return torch.stack(rows).float()

    def _optimizer_step(self, clip: Optional[float], clip_params: List[nn.Parameter], fraction: float) -> None:
        """Unscale (fp16), rescale a short accumulation group by ``1/fraction``, clip, step."""
        scaler = self.scaler
        if self.dist is not None:  # the global batch's gradient on every rank (still scaled: same scale everywhere)
            fraction = self.dist.before_step(self, fraction)
        if scaler.is_enabled():
            scaler.unscale_(self.optimizer)
        if fraction != 1.0:
            grads = [p.grad for p in self.trainable_parameters() if p.grad is not None]
            torch._foreach_div_(grads, fraction)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, clip)
        scaler.step(self.optimizer)
        scaler.update()

    def check_finite(self, epoch: int, rows: Tensor) -> None:
        """Stop with one line at the epoch's first non-finite loss, before anything is saved."""
        names = ["total", *self.method.term_weights()]
        check_finite(rows, names, epoch, self.trainable_parameters(), self.saved_note(epoch))

    def evaluate_split(self, name: str, model: Optional[nn.Module] = None) -> Optional[Dict[str, float]]:
        """Accuracy and loss of ``model`` (default: the student) on the ``test`` or ``val`` split
        (None when the data have none)."""
        split = getattr(self.data, name)
        if split is None:
            return None
        model = self.model if model is None else model
        if self.loaders is not None:
            return evaluate_loader(model, split, self.device)
        return evaluate(model, split, self.cfg.eval_batch_size)

    def epoch_records(self, epoch: int, rows: Tensor, lr: float, train_seconds: float) -> List[Dict[str, Any]]:
        """One metrics record per student (here: one) for the epoch just trained."""
        t1 = time.perf_counter()
        test, val = self.evaluate_split("test"), self.evaluate_split("val")
        record = method_record(epoch, rows, self.method, None if test is None else (test["acc"], test["loss"]), lr,
                               None if val is None else (val["acc"], val["loss"]))
        record.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1)
        return [record]

    def fit(self) -> List[FitResult]:
        """Train from ``start_epoch`` to ``cfg.epochs``; one :class:`FitResult` per student.

        Callbacks see every epoch's records; the best epoch of each student is chosen on
        validation accuracy when a validation split exists, else on test accuracy.
        """
        plan = thread_plan()
        if plan is not None:  # fixed for the whole process before any model ran (kdlab.device.plan_threads)
            self.threads = plan
            return self._fit()
        macs = self.step_macs()
        threads, why = (choose_threads(macs) if macs is not None else
                        (torch.get_num_threads(), "torch's default (the data come from a DataLoader: step size not measured)"))
        self.threads = {"intra_op": threads, "reason": why, "step_multiply_adds": macs}
        with intra_op_threads(threads):
            return self._fit()

    def step_macs(self) -> Optional[int]:
        """Multiply-adds of one training step's forwards (the student's, and an online teacher's), from
        one training input; None when batches come from a user's DataLoader (not read ahead)."""
        if self.loaders is not None:
            return None
        sample, batch = self.data.train.x[:1], self.cfg.batch_size  # type: ignore[union-attr]
        macs = step_macs(self.model, sample, batch)
        teacher = getattr(self.teacher, "model", None)
        if teacher is not None and self.cached_logits is None:  # it runs on every batch
            macs += step_macs(teacher, sample, batch)
        return macs

    def _fit(self) -> List[FitResult]:
        flushing = flush_denormal_enabled()
        self.flush_denormal_supported, self.flush_denormal_all_threads = set_flush_denormal(bool(self.cfg.flush_denormal))
        try:
            self.callbacks.on_fit_start(self)
            for epoch in range(self.start_epoch, self.cfg.epochs + 1):
                self.callbacks.on_epoch_start(self, epoch)
                if self.weight_plan.apply(self.methods, epoch):  # a stage with reset_optimizer starts here
                    self.optimizer.state.clear()
                t0 = time.perf_counter()
                rows = self.train_epoch()
                if self.dist is not None:
                    rows = self.dist.epoch_rows(self, rows)
                lr = self.optimizer.param_groups[0]["lr"]
                if self.scheduler is not None:
                    self.scheduler.step()
                self.check_finite(epoch, rows)
                records = self.epoch_records(epoch, rows, lr, time.perf_counter() - t0)
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
        finally:
            try:
                self.callbacks.on_fit_end(self)
                self.weight_plan.release(self.methods)  # handed back as configured
                self.close()
            finally:
                set_flush_denormal(flushing)
        return self.results()

    def step_losses(self, rows: Tensor) -> List[Tuple[List[str], Tensor]]:
        """Per student: the names and (steps, names) columns of one epoch's loss rows (callbacks log them)."""
        return [(["total", *self.method.term_weights()], rows)]

    @property
    def history(self) -> List[Dict[str, Any]]:
        """The single student's records (histories[0])."""
        return self.histories[0] if self.histories else []

    def close(self) -> None:
        """Remove the forward hooks the trainer put on the models (they are handed back unmodified)."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()

    def results(self) -> List[FitResult]:
        width = 1 + len(self.method.term_weights())
        steps = torch.cat(self.step_rows) if self.step_rows else torch.empty(0, width)
        return [FitResult(self.history, steps, self.best_epoch, self.best_metric)]


def _float_outputs(outputs: Optional[Outputs]) -> Optional[Outputs]:
    """Logits and features in fp32 (autocast leaves them bf16/fp16)."""
    if outputs is None:
        return None
    feats = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.features.items()}
    return Outputs(outputs.logits.float(), feats)
