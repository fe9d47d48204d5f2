"""The builder of a run's parts: each part of the epoch loop chosen once, with the reason recorded.

:func:`build_trainer` (one student) and :func:`build_grid_trainer` (a variant × seed grid) choose
the teacher source, the precision and process plugins and the step, build the method's
shape-dependent parts, the optimizer and the scheduler, in an order that keeps every random stream
where it was (so a run is reproducible across versions), and hand them to one
:class:`~kdlab.train.trainer.Trainer`. What was chosen and why is in :meth:`Trainer.run_facts`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import BatchIndexer, DatasetSplits, TensorData, data_fingerprint
from ..data.views import views_fact
from ..data.loaders import LoaderSplits, loader_batches
from ..methods.base import Batch, Distiller, RunContext
from ..teacher import FrozenTeacher
from .callbacks import Callback
from .constraints import attach_max_norm
from .optim import OPTIMIZERS, build_scheduler
from .precision import Precision
from .processes import current_processes, refuse_batched
from .sources import CachedLogits, NoTeacher, OnlineTeacher, per_batch_source, source_facts, tabulated_source
from .stored import SignalsPlan, StudySignals, stored_source
from .steps.autograd import Augment, AutogradStep
from .steps.closed_form import ClosedFormStep
from .steps.grid import GridStep
from .steps.planner import PROBE_ROWS, closed_form_disagreement, plan_step
from .students import OneStudent, StudentGrid
from .trainer import Trainer

#: Offset of the augmentation stream from the run's seed (kept: recorded runs replay their crops).
AUGMENT_SEED_OFFSET = 7919


def build_trainer(
    model: nn.Module,
    method: Distiller,
    data: DatasetSplits | LoaderSplits,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    teacher: Optional[FrozenTeacher] = None,
    teacher_logits: Optional[Tensor] = None,
    augment: Optional[Augment] = None,
    callbacks: Sequence[Optional[Callback]] = (),
    device: Optional[torch.device] = None,
    weight_plan: Any = None,
    steps: str = "auto",
    signals: Optional[SignalsPlan] = None,
) -> Trainer:
    """The trainer of ``model`` with ``method`` on ``data`` for ``cfg.epochs`` epochs.

    ``teacher`` is a :class:`FrozenTeacher` (or None for methods without one); ``teacher_logits``
    are precomputed training-set logits that spare the teacher's forward (studies share them).
    ``augment(x, y, generator)`` transforms each batch (the teacher then runs online).
    ``steps="autograd"`` insists on the autograd step (the planner chooses otherwise).
    ``signals`` (a :class:`~kdlab.train.stored.SignalsPlan`): when the teacher would run on every
    batch, run it once per stored view instead and train from the store (``augment`` is then unused:
    the batches are the plan's replayable views).
    """
    if device is not None:
        for part in (model, method, teacher):
            if part is not None:
                part.to(device)
    loaders = data if isinstance(data, LoaderSplits) else None  # a user's loader may augment per sample
    needs = method.needs
    if needs.teacher and teacher is None and teacher_logits is None:
        raise ValueError("this method needs a teacher: pass teacher= or teacher_logits=")
    processes = current_processes()
    n_train = len(data.train.dataset) if loaders is not None else len(data.train)  # type: ignore[union-attr,arg-type]
    processes.check(method, n_train if loaders is None else None, cfg.batch_size)
    students = OneStudent(model, method, data, cfg.eval_batch_size, device)
    in_memory = loaders is None
    augmented = augment is not None or (signals is not None and signals.views.cfg.enabled)
    tabulate = in_memory and not augmented
    dev = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    precision = Precision.of(cfg, dev, model, getattr(teacher, "model", None))
    if teacher is not None and teacher_logits is None and needs.teacher:
        precision.teacher_pass(teacher)  # its one pass over the data (cached logits) in the run's layout
    # the teacher's logits first, as one pass (each process a share): nothing random runs in it
    tabulated = tabulated_source(method, teacher, teacher_logits, tabulate=tabulate,
                                 x=None if loaders is not None else data.train.x,  # type: ignore[union-attr]
                                 batch_size=cfg.eval_batch_size, logits_for=processes.teacher_logits)
    indexer = BatchIndexer(n_train, cfg.batch_size, shuffle=True, seed=seed)
    if in_memory:  # a user's DataLoader is sharded by its own DistributedSampler
        indexer = processes.indexer(indexer)
    # before any hook is on the models: a method may copy the student (an EMA teacher)
    method.setup(RunContext(n_train, seed, model, getattr(teacher, "model", None), _val_accuracy(students)))
    students.hook_features()
    # online, EMA: built after the method's setup (the teacher's hooks; the method's EMA copy)
    source, source_reason = tabulated if tabulated is not None else per_batch_source(method, model, teacher)
    augment_rng = torch.Generator().manual_seed(seed + AUGMENT_SEED_OFFSET)
    if method.lazy or not needs.logits_only:  # build adapters; bad layer pairs fail before any training
        _build_lazy_parts(students, source, data, loaders, device)
    params = students.parameters()
    optimizer = OPTIMIZERS.get(cfg.optimizer.name)(params, cfg.optimizer)
    if cfg.max_norm is not None:
        attach_max_norm(optimizer, model, cfg.max_norm)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, cfg.warmup_epochs)
    precision.prepare(model, source)
    train = data.train if in_memory else None
    replay = None
    if signals is not None and in_memory and isinstance(source, NoTeacher) and signals.views.cfg.enabled:
        replay, augment = signals.views, None  # a study's scratch student sees the distilled students' views
        source_reason = f"{source_reason}; the batches replay {signals.views.views} stored view(s) per sample"
    elif signals is not None and not signals.store and in_memory and isinstance(source, OnlineTeacher):
        replay, augment = signals.views, None
        source_reason = f"{source_reason}; replaying {signals.views.views} stored view(s) per sample with the teacher online"
    elif signals is not None:
        stored, why = _stored(signals, method, source, data, in_memory, precision, device)
        if stored is not None:
            source.close()
            source, source_reason, replay, augment = stored, why, signals.views, None
        elif why:
            source_reason = f"{source_reason}; {why}"
    choice = plan_step(method, model, source, precision, train=train, num_classes=data.num_classes, in_memory=in_memory,
                       augmented=augmented, accumulate=cfg.accumulate_steps, force=steps)
    if choice.fast is not None:
        step: Any = ClosedFormStep(students=students, method=method, fast=choice.fast, train=train, indexer=indexer,
                                   optimizer=optimizer, params=params, clip=cfg.grad_clip, processes=processes,
                                   chain=choice.chain, inputs=precision.inputs)
    else:
        step = AutogradStep(students=students, method=method, source=source, precision=precision, processes=processes,
                            optimizer=optimizer, params=params, clip=cfg.grad_clip, accumulate=cfg.accumulate_steps,
                            batch_size=cfg.batch_size, indexer=indexer, train=train,
                            loader=loaders.train if loaders is not None else None, device=device,
                            augment=augment, augment_rng=augment_rng, replay=replay)
    choices = {"step": choice.kind, "step_reason": choice.reason, **source_facts(source, source_reason)}
    if replay is not None:
        store = getattr(source, "store", None)
        choices["teacher_signals"] = {**(store.facts() if store is not None else {"store": None}),
                                      "views_note": views_fact(replay, cfg.epochs)}
    return Trainer(students=students, step=step, source=source, precision=precision, processes=processes,
                   optimizer=optimizer, scheduler=scheduler, cfg=cfg, weight_plan=weight_plan, callbacks=callbacks,
                   indexer=indexer, augment_rng=augment_rng, data=data, choices=choices)


def _stored(plan: SignalsPlan, method: Distiller, source: Any, data: Any, in_memory: bool, precision: Precision,
            device: Optional[torch.device]) -> "tuple[Any, str]":
    """The stored-signal source that replaces an online teacher, with the reason; (None, why not)."""
    if not isinstance(source, OnlineTeacher):
        return None, ""  # no teacher, cached logits or the method's own EMA: nothing to store
    if not in_memory:
        return None, "no stored signal: batches come from a DataLoader, so their views cannot be replayed"
    return stored_source(plan, method, source, data.train, data_fingerprint(data), precision, device)


def grid_train_blocker(cfg: TrainConfig) -> Optional[str]:
    """Why these train settings cannot be batched (None when they can): the batched step is fp32,
    one optimizer step per batch, default memory format (``channels_last: auto`` resolves to it there)."""
    if getattr(cfg, "max_norm", None) is not None:
        return "train.max_norm is applied one student at a time only (the batched step keeps no nn.Linear weights)"
    if cfg.precision != "fp32" or cfg.accumulate_steps != 1 or getattr(cfg, "channels_last", False) is True:
        return (f"train.precision={cfg.precision}, accumulate_steps={cfg.accumulate_steps}, channels_last={cfg.channels_last} "
                "are supported one student at a time only (the batched step is fp32, one step per batch)")
    return None


def grid_method_reason(method: Distiller) -> Optional[str]:
    """Why ``method`` cannot train in the batched grid (None when it can), as a clause: "its adapters are ...".

    The grid computes methods that read logits (in closed form or vmapped through autograd), and
    methods that read student and teacher features when they declare it (``Distiller.grid_features``)
    and have no parameters of their own: the grid taps every student's features in its stacked forward.
    Per-student parameters (adapters, heads), per-sample state, teacher members or a method's own
    teacher would need one copy per student, which the stacked step does not keep.
    """
    needs = method.needs
    if method.grid_refusal:
        return method.grid_refusal
    if needs.ema_teacher:
        return "it is its own teacher (an EMA copy of each student)"
    if needs.teacher_members:
        return "it reads each teacher member's logits, which the batched step does not stack"
    if needs.indices:
        return "it keeps per-sample state by sample index"
    if needs.logits_only:
        return None
    if not method.grid_features:
        return "its feature loss is not declared batchable (Distiller.grid_features)"
    if method.lazy or any(True for _ in method.parameters()):
        return "it has trainable parameters of its own, one set per student"
    return None


def grid_method_blocker(method: Distiller) -> Optional[str]:
    """:func:`grid_method_reason` as a sentence naming the method (None when the grid can train it)."""
    why = grid_method_reason(method)
    return None if why is None else f"{method.method_name or type(method).__name__} trains one student at a time: {why}"


def build_grid_trainer(
    students: Sequence[Sequence[nn.Module]],
    methods: Sequence[Distiller],
    seeds: Sequence[int],
    data: DatasetSplits,
    cfg: TrainConfig,
    *,
    teacher_logits: Optional[Tensor] = None,
    teacher: Optional[FrozenTeacher] = None,
    signals: Optional[SignalsPlan] = None,
    callbacks: Sequence[Optional[Callback]] = (),
    weight_plan: Any = None,
) -> Trainer:
    """The trainer of ``students[v][s]`` with ``methods[v]`` and the batch order of ``seeds[s]``, all in one step.

    The teacher side: ``teacher_logits`` (training-set logits, plain batches), or ``teacher`` with
    ``signals`` (a :class:`~kdlab.train.stored.SignalsPlan`): every student replays the plan's views
    and the distilling ones read the teacher's logits of those views from its store. Students that read
    no teacher replay the plan's views too when it augments (a study's scratch baseline).
    """
    distilling = [m for m in methods if m.needs.teacher]
    if distilling and teacher_logits is None and (teacher is None or signals is None):
        raise ValueError("distilling variants need teacher_logits (one row per training sample), "
                         "or a teacher and a signals plan")
    if any(m.needs.teacher_features for m in distilling) and (teacher is None or signals is None):
        raise ValueError("variants reading the teacher's features need a teacher and a signals plan (its store holds them)")
    if teacher_logits is not None and signals is not None and signals.views.cfg.enabled:
        raise ValueError("replayed augmented views need the teacher's outputs of those views (teacher= and signals=), "
                         "not training-set logits")
    for m in methods:
        why = grid_method_blocker(m)
        if why is not None:
            raise ValueError(f"cannot batch these students: {why}")
    blocker = grid_train_blocker(cfg)
    if blocker:
        raise ValueError(f"cannot batch these students: {blocker}")
    processes = current_processes()
    refuse_batched(processes)
    grid = StudentGrid(students, methods, seeds, data, cfg.eval_batch_size)
    device = next(iter(grid.params.values())).device
    precision = Precision.of(cfg, device, None, getattr(teacher, "model", None),
                             student_layout=(False, "the batched step keeps the standard layout"))
    source, reason, replay = _grid_source(distilling, teacher_logits, teacher, signals, data, precision, device)
    fast = _grid_fast_paths(methods, data, source, replay, teacher_logits)
    optimizer = OPTIMIZERS.get(cfg.optimizer.name)(grid.parameters(), cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.epochs, cfg.warmup_epochs)
    indexers = [BatchIndexer(len(data.train), cfg.batch_size, shuffle=True, seed=s) for s in seeds]
    step = GridStep(grid=grid, train=data.train, indexers=indexers, fast=fast, source=source,
                    optimizer=optimizer, clip=cfg.grad_clip, replay=replay)
    choices = {"step": step.kind, "step_reason": f"{grid.M} students of one architecture, stacked",
               **source_facts(source, reason)}
    if replay is not None:
        store = getattr(source, "store", None)
        choices["teacher_signals"] = {**(store.facts() if store is not None else {"store": None}),
                                      "views_note": views_fact(replay, cfg.epochs)}
    return Trainer(students=grid, step=step, source=source, precision=precision, processes=processes,
                   optimizer=optimizer, scheduler=scheduler, cfg=cfg, weight_plan=weight_plan, callbacks=callbacks,
                   indexer=indexers[0], data=data, choices=choices)


def _grid_source(distilling: Sequence[Distiller], teacher_logits: Optional[Tensor], teacher: Optional[FrozenTeacher],
                 signals: Optional[SignalsPlan], data: DatasetSplits, precision: Precision,
                 device: torch.device) -> "tuple[Any, str, Any]":
    """The grid's teacher source, why, and the views its batches replay (None: the stored tensors as they are)."""
    augmenting = signals.views if signals is not None and signals.views.cfg.enabled else None
    if not distilling:
        why = "no teacher" if augmenting is None else f"no teacher; the batches replay {augmenting.views} stored view(s) per sample"
        return NoTeacher(), why, augmenting
    if teacher_logits is not None and not any(m.needs.teacher_features for m in distilling):
        return CachedLogits(teacher_logits), "training-set logits shared by the grid", None
    assert teacher is not None and signals is not None
    temperatures = {m.configured_temperature() for m in distilling}
    if signals.top_k is not None and len(temperatures) > 1:
        raise ValueError("top-k stored logits are exact at one temperature; these variants distil at several "
                         f"({', '.join(map(str, sorted(temperatures, key=str)))}): batch them per temperature")
    union = StudySignals(distilling)  # one store: the logits and every variant's teacher features in its form
    if union.left_out:
        clash = ", ".join(m.method_name or type(m).__name__ for m in union.left_out)
        raise ValueError(f"cannot batch these students: {clash} read(s) a teacher layer in another form than an "
                         "earlier variant, and one store holds one form per layer; train them one by one")
    features = union.needs.teacher_features
    teacher.to(device)
    online = OnlineTeacher(teacher, features, False, union.teacher_signal if features else None)
    precision.teacher_pass(online)
    try:
        stored, why = stored_source(signals, union, online, data.train, data_fingerprint(data), precision, device)
    finally:
        online.close()
    if stored is None:
        raise ValueError(f"cannot batch these students without a stored teacher signal ({why})")
    return stored, why, signals.views


def _grid_fast_paths(methods: Sequence[Distiller], data: DatasetSplits, source: Any, replay: Any,
                     teacher_logits: Optional[Tensor]) -> list:
    """Each method's closed form where it computes exactly the method's loss (checked on a probe), else None.

    On replayed views the probe is the views' own batch (labels come out soft under MixUp/CutMix, which
    have no closed form) with the teacher's outputs of those views, and the rows are built per batch."""
    Y, K = data.train.y, data.num_classes
    if replay is None:  # (a feature method has no closed form: its features go through autograd)
        fast = [m.fast_path(Y, K, teacher_logits if m.needs.teacher else None) if m.needs.logits_only else None
                for m in methods]
        return [f if f is None or closed_form_disagreement(m, f, data.train, K, teacher_logits if m.needs.teacher else None)
                is None else None for f, m in zip(fast, methods)]
    X = data.train.x
    idx = torch.arange(min(PROBE_ROWS, len(Y)), device=X.device)
    view = torch.zeros_like(idx)
    x, y = replay(X, Y, idx, view)
    teacher = source.outputs(Batch(x, y, idx, view))
    probe_logits = teacher.logits if teacher is not None else None
    probe = TensorData(x, y)
    out = []
    for m in methods:
        if not m.needs.logits_only:
            out.append(None)
            continue
        table = probe_logits if m.needs.teacher else None
        f = m.fast_path(y, K, table)
        ok = f is not None and closed_form_disagreement(m, f, probe, K, table) is None
        out.append(m.fast_path(Y, K, None) if ok else None)
    return out


def _val_accuracy(students: OneStudent) -> Optional[Callable[[nn.Module], float]]:
    """Accuracy of any model on the validation split (methods weighting teachers use it)."""
    if students.data.val is None:
        return None
    return lambda m: students.evaluate_split("val", m)["acc"]  # type: ignore[index]


@torch.no_grad()
def _build_lazy_parts(students: OneStudent, source: Any, data: Any, loaders: Optional[LoaderSplits],
                      device: Optional[torch.device]) -> None:
    """Let the method build its shape-dependent parts (adapters) from one probe batch.

    Both models run in eval mode so BatchNorm statistics do not see the probe.
    """
    model = students.model
    was = model.training
    model.eval()
    try:
        if loaders is not None:
            x, y, idx = next(loader_batches(loaders.train, device))
        else:
            train = data.train
            idx = torch.arange(min(2, len(train)), device=train.x.device)
            x, y = train.x.index_select(0, idx), train.y.index_select(0, idx)
        batch = Batch(x, y, idx)
        teacher = source.outputs(batch) if students.method.needs.teacher else None
        students.method.build(batch, students.outputs(batch.x), teacher)
    finally:
        model.train(was)
