"""The library API behind every CLI command: train a teacher, a scratch student, or distill.

Each ``run_*`` function takes a validated :class:`Recipe`, writes a run folder (config, versions,
seed, metrics, checkpoints) and returns a :class:`RunResult`. The CLI only parses arguments and
prints; anything it does can be done from Python with these functions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .config import Recipe
from .recipes import dump_recipe
from .data import DatasetSplits, dataset_shape, input_spec, load_dataset
from .data.augment import AugmentConfig, build_augment
from .data.subset import subset_facts, subset_indices
from .data.transfer import transfer_indices, transfer_split
from .data.views import ReplayViews
from .errors import ConfigError
from .methods import CE, Distiller, build_method
from .models import build_model, count_parameters
from .teacher import FrozenTeacher, TeacherEnsemble
from .train import FitResult, RunDir, distributed, load_model
from .train.processes import current_processes
from .train.run import RunRecord, RunSpec
from .train.run import run as run_spec
from .teacher_cache import cached_teacher, check_teacher_cache, teacher_cache_root
from .teacher_cache.signals import signal_store
from .train.build import AUGMENT_SEED_OFFSET
from .train.stored import SignalsPlan, TeacherSignalsConfig
from .train import evaluate
from .train.checkpoint import model_payload
from .train.callbacks import Callback, PlanNote, rank_zero
from .train.stages import check_stages
from .train.weights import WeightPlan
from .train.rundir import check_new_run_folder, new_run_dir
from .device import plan_threads, resolve_device, step_macs
from .utils import check_output_location, file_digest, seed_everything

ROLE_SEED_OFFSET = {"teacher": 0, "student": 1}


@dataclass
class RunResult:
    role: str
    path: Optional[Path]
    model: nn.Module
    fit: FitResult
    parameters: int

    @property
    def final_acc(self) -> float:
        return float(self.fit.final["test_acc"])

    @property
    def best_acc(self) -> float:
        return max(float(h["test_acc"]) for h in self.fit.history)


def prepare_data(recipe: Recipe) -> DatasetSplits:
    """The recipe's dataset as in-memory tensors on the recipe's device."""
    d = recipe.dataset
    return load_dataset(d.name, d.data_dir, d.download, d.val_fraction, recipe.seed).to(resolve_device(recipe.device))


def plan_threads_for(recipe: Recipe, data: DatasetSplits, role: str = "student", models: int = 1) -> Optional[Dict[str, Any]]:
    """Fix the process's intra-op threads from the step of ``models`` ``role`` models of the recipe
    (:func:`kdlab.device.plan_threads`), before any model runs. The model is built under a forked
    RNG, so no random stream moves."""
    cfg = getattr(recipe, role)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg.model.name, data.in_shape, data.num_classes, cfg.model.params, where=f"{role}.model")
    return plan_threads(step_macs(model, data.train.x[:1], cfg.train.batch_size) * models)


def build_role_model(recipe: Recipe, role: str, data: DatasetSplits) -> nn.Module:
    """Build the teacher or student with seeded initial weights.

    The student seed does not depend on the loss, so scratch and distilled students start from
    identical weights and differ only in what they are trained on.
    """
    cfg = getattr(recipe, role).model
    seed_everything(recipe.seed + ROLE_SEED_OFFSET[role])
    model = build_model(cfg.name, data.in_shape, data.num_classes, cfg.params, where=f"{role}.model")
    return model.to(data.train.x.device)


def layer_models(recipe: Recipe, roles: Sequence[str]) -> "tuple[str, tuple, Dict[str, nn.Module]]":
    """The recipe's models as built (seeded, untrained) for listing their layers, with the dataset's
    name and input shape. A dataset whose shape is declared (built-in ones) is not read at all, so
    ``kdlab layers`` works before the data are downloaded; any other dataset is loaded to find out."""
    shape = dataset_shape(recipe.dataset.name)
    if shape is not None:
        in_shape, num_classes, device = shape.in_shape, shape.num_classes, resolve_device(recipe.device)
    else:
        data = prepare_data(recipe)
        in_shape, num_classes, device = data.in_shape, data.num_classes, data.train.x.device
    models = {}
    for role in roles:
        cfg = getattr(recipe, role).model
        seed_everything(recipe.seed + ROLE_SEED_OFFSET[role])
        models[role] = build_model(cfg.name, in_shape, num_classes, cfg.params, where=f"{role}.model").to(device)
    return recipe.dataset.name, tuple(in_shape), models


def _run_dir(recipe: Recipe, role: str, out: Optional[str | os.PathLike], resume: bool) -> Optional[RunDir]:
    """The run folder: ``out`` (refused when it already holds a run, unless resuming) or a new one."""
    if out is False:  # type: ignore[comparison-overlap]
        return None
    if out:
        return RunDir(check_output_location(out, "run folder") if resume else check_new_run_folder(out))
    check_output_location(recipe.out_dir, "output folder (recipe out_dir)")
    return new_run_dir(recipe.out_dir, f"{recipe.name}-{role}")


def train_role(
    recipe: Recipe,
    role: str,
    kind: str,
    data: DatasetSplits,
    method: Distiller,
    out: Any,
    teacher: Optional[FrozenTeacher] = None,
    progress: Optional[bool] = None,
    resume: bool = False,
    extra_info: Optional[Dict[str, Any]] = None,
    teacher_logits: Optional[Tensor] = None,
    callbacks: Sequence[Optional[Callback]] = (),
    verbose: bool = False,
    teacher_online: bool = False,
    signal_cache: Optional[str | os.PathLike] = None,
    signal_seed: Optional[int] = None,
    signals: Optional[SignalsPlan] = None,
) -> RunResult:
    """Build the ``role`` model with its seeded weights and train it with ``method``.

    The teacher reaches the method as ``teacher_logits`` (training-set logits computed once, e.g.
    shared by many students of a study) or ``teacher`` (the trainer caches its logits when the
    method needs nothing else, and runs it online for features).
    ``out`` must not already hold a run unless ``resume`` (then ``recipe`` should be the run's own,
    as the CLI's ``--resume`` ensures); ``config.yaml``/``run.json`` are written once training can start.
    ``verbose``: print what kdlab chose for the run (step, teacher source, threads) and why.
    Where the teacher would run on every batch (augmentation, features), it runs once per stored view
    into a signal store under the teacher cache (``signal_cache``, default the teacher cache's folder)
    and the student trains from the store, unless ``teacher_online`` or ``teacher_signals.online``.
    ``signal_seed`` fixes the views' seed (a study shares one store across its seeds); default the recipe's.
    ``signals``: the plan to use instead of the recipe's (a study's, answering from its one shared store).
    """
    role_cfg = getattr(recipe, role)
    staged = bool(recipe.distill.stages) and kind not in ("teacher", "scratch")  # a distilled student (compare: its variant name)
    if role == "student" and recipe.dataset.student_subset.active:
        data, teacher_logits = student_data(recipe, data, teacher_logits)
        extra_info = {**(extra_info or {}), "student_subset": data.info["student_subset"]}
    if role == "student" and kind not in ("teacher", "scratch") and recipe.distill.transfer.active:
        data, teacher_logits, facts = _transfer_set(recipe, data, teacher_logits)
        extra_info = {**(extra_info or {}), "transfer": facts}
    if staged:
        check_stages(recipe.distill.stages, method)  # before any folder is written
    current_processes().check(method, len(data.train), role_cfg.train.batch_size)  # before any folder is written
    model = build_role_model(recipe, role, data)
    run = _run_dir(recipe, kind, out, resume)
    meta = model_payload(model, role_cfg.model.name, role_cfg.model.params, data.in_shape, data.num_classes, role, input_spec(data))
    meta.pop("state_dict")
    record = None
    if run is not None:
        info = {"dataset": data.name, "data_source": data.info.get("source"), "parameters": count_parameters(model), **(extra_info or {})}
        record = RunRecord(dump_recipe(recipe), kind, info)
    augment = None
    # the students' batches follow the top-level augment, the teacher's own training its teacher.augment
    augment_section = recipe.augment if role == "student" else role_cfg.augment
    if augment_section:
        augment = build_augment(augment_section, data.num_classes, data.info.get("mean"), data.info.get("std"))
        if not augment.cfg.enabled:
            augment = None
        elif teacher_logits is not None and kind != "scratch":
            raise ConfigError("augmented batches need the teacher itself (it must see the same augmented images), not "
                              "precomputed logits; this command does not support the recipe's augment section yet — remove it")
    if teacher is not None:
        teacher.to(data.train.x.device)
    # a study (signal_seed) replays the same views for its scratch students too: paired by construction
    if ((teacher is not None and teacher_logits is None) or (signal_seed is not None and teacher_logits is None)) \
            and not teacher_online and role == "student":
        signals = signals or signals_plan(recipe, data, role_cfg.train.epochs, signal_cache, signal_seed)
    else:
        signals = None
    seed_everything(recipe.seed + 100 + ROLE_SEED_OFFSET[role])  # dropout stream, independent of init
    (result,) = run_spec(RunSpec(
        data=data, train=role_cfg.train, model=model, method=method, seed=recipe.seed,
        teacher=teacher if teacher_logits is None else None, teacher_logits=teacher_logits, augment=augment,
        weight_plan=WeightPlan(role_cfg.train.epochs, recipe.distill, recipe.distill.stages if staged else ()),
        callbacks=[*callbacks, rank_zero(PlanNote()) if verbose else None], run=run, checkpoint_meta=meta, resume=resume, record=record, progress=progress, desc=kind,
        signals=signals,
    ))
    return RunResult(kind, run.path if run else None, model, result, count_parameters(model))


def signals_plan(recipe: Recipe, data: DatasetSplits, epochs: int, cache_dir: Optional[str | os.PathLike] = None,
                 seed: Optional[int] = None) -> Optional[SignalsPlan]:
    """The recipe's stored-teacher-signal plan (views of its augmentation, the store's folder), or None
    when ``teacher_signals.online`` keeps the teacher online."""
    cfg = TeacherSignalsConfig.from_dict(recipe.teacher_signals)
    if cfg.online:
        return None
    augment = AugmentConfig.from_dict(recipe.augment)
    views = ReplayViews(augment, (recipe.seed if seed is None else seed) + AUGMENT_SEED_OFFSET, cfg.views_for(augment.enabled, epochs),
                        data.num_classes, data.info.get("mean"), data.info.get("std"))
    top_k = cfg.top_k_for(data.num_classes)
    if top_k is not None and recipe.distill.temperature_schedule.name != "constant":
        raise ConfigError("teacher_signals.top_k: top-k logits are exact at one temperature, and "
                          "distill.temperature_schedule moves it; use teacher_signals.top_k=all or a constant temperature")
    root = teacher_cache_root(cache_dir) / "signals"
    return SignalsPlan(views, functools.partial(signal_store, root, max_gb=cfg.max_gb, log=_signal_log),
                       feature_dtype=cfg.dtype, explicit=cfg.given, top_k=top_k, precision=cfg.precision)


def _signal_log(message: str) -> None:
    if distributed.launched_rank() == 0:
        print(f"kdlab: {message}", file=sys.stderr, flush=True)


def student_data(recipe: Recipe, data: DatasetSplits, teacher_logits: Optional[Tensor] = None) -> "tuple[DatasetSplits, Optional[Tensor]]":
    """The students' data: the training split cut to ``dataset.student_subset`` (its facts in
    ``info["student_subset"]``), and the teacher's training-set logits (if handed in) cut alike.
    Data already cut (a study cuts it once for all its students) and a recipe without a subset
    come back unchanged."""
    cfg = recipe.dataset.student_subset
    if not cfg.active or "student_subset" in data.info:
        return data, teacher_logits
    idx = subset_indices(data.train.y, cfg, data.num_classes)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.index_select(0, idx.to(teacher_logits.device))
    facts = subset_facts(data.train.y, idx, cfg, data.num_classes)
    cut = transfer_split(data, idx)
    cut.info["student_subset"] = facts
    return cut, teacher_logits


def _transfer_set(recipe: Recipe, data: DatasetSplits, teacher_logits: Optional[Tensor]):
    """The distilled student's data cut to the recipe's transfer set (``distill.transfer``), the
    teacher's training-set logits (if handed in) cut alike, and the facts ``run.json`` records."""
    t = recipe.distill.transfer
    idx = transfer_indices(data.train.y, t, data.num_classes, recipe.seed)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.index_select(0, idx.to(teacher_logits.device))
    counts = data.train.y.index_select(0, idx).bincount(minlength=data.num_classes).tolist()
    facts = {"examples": len(idx), "of": len(data.train), "labels": t.labels, "class_counts": counts}
    return transfer_split(data, idx), teacher_logits, facts


def run_teacher(recipe: Recipe, data: Optional[DatasetSplits] = None, out: Any = None, progress: Optional[bool] = None,
                resume: bool = False, verbose: bool = False) -> RunResult:
    """Train the recipe's teacher on hard labels."""
    data = data or prepare_data(recipe)
    plan_threads_for(recipe, data, "teacher")
    return train_role(recipe, "teacher", "teacher", data, CE(), out, progress=progress, resume=resume, verbose=verbose)


def run_student(recipe: Recipe, data: Optional[DatasetSplits] = None, out: Any = None, progress: Optional[bool] = None,
                resume: bool = False, verbose: bool = False) -> RunResult:
    """Train the recipe's student from scratch on hard labels (the baseline distillation must beat)."""
    data = data or prepare_data(recipe)
    plan_threads_for(recipe, data, "student")
    return train_role(recipe, "student", "scratch", data, CE(), out, progress=progress, resume=resume, verbose=verbose)


def warn(message: str) -> None:
    """A one-line warning on stderr: the run goes on, but the user must know (e.g. a dubious teacher)."""
    if distributed.launched_rank() == 0:  # once, not once per torchrun process
        print(f"kdlab: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def checkpoint_role(path: str | os.PathLike, payload: Dict[str, Any]) -> Optional[str]:
    """"teacher" or "student" as the checkpoint records it (older ones: from the run.json beside it)."""
    role = payload.get("role")
    if isinstance(role, str):
        return role
    try:
        kind = json.loads((Path(path).parent / "run.json").read_text()).get("role")
    except (OSError, ValueError, AttributeError):
        return None
    return {"teacher": "teacher", "scratch": "student", "distill": "student", "tune": "student"}.get(kind)


def load_teacher(path: str | os.PathLike, data: DatasetSplits, student_parameters: Optional[int] = None) -> FrozenTeacher:
    """Load a teacher checkpoint and check it fits ``data``.

    A checkpoint saved as a student, or a teacher with fewer parameters than ``student_parameters``,
    is accepted (it may be deliberate, e.g. self-distillation) but with a one-line warning on stderr.
    """
    model, payload = load_model(path)
    spec = payload["model"]
    if int(spec["num_classes"]) != data.num_classes:
        raise ConfigError(
            f"class count mismatch: teacher {path} has {spec['num_classes']} outputs, dataset {data.name!r} has "
            f"{data.num_classes} classes; use a teacher trained on {data.name}"
        )
    if tuple(spec["in_shape"]) != tuple(data.in_shape):
        raise ConfigError(
            f"input shape mismatch: teacher {path} expects {tuple(spec['in_shape'])}, dataset {data.name!r} gives "
            f"{tuple(data.in_shape)}; use a teacher trained on {data.name}"
        )
    role = checkpoint_role(path, payload)
    if role is not None and role != "teacher":
        warn(f"checkpoint {path} was saved as a {role}, not a teacher; distilling from it anyway "
             "(pass a train-teacher checkpoint if this was a mistake)")
    if student_parameters is not None:
        _warn_if_smaller(count_parameters(model, trainable_only=False), student_parameters, f"teacher {path}")
    return FrozenTeacher(model)


def _warn_if_smaller(teacher_parameters: int, student_parameters: int, what: str) -> None:
    if teacher_parameters < student_parameters:
        warn(f"{what} has {teacher_parameters:,} parameters, fewer than the student's {student_parameters:,}; "
             "distilling from a smaller teacher rarely helps (check --teacher and the recipe's student)")


def count_student_parameters(recipe: Recipe, data: DatasetSplits) -> int:
    """Parameter count of the recipe's student (built on the CPU, no training)."""
    cfg = recipe.student.model
    return count_parameters(build_model(cfg.name, data.in_shape, data.num_classes, cfg.params, where="student.model"))


def distill_method(recipe: Recipe, loss: Optional[str] = None) -> Distiller:
    """The recipe's method (``distill.method`` with its ``distill.<method>`` section); ``loss``
    swaps the soft-loss coding (as ``kdlab compare`` does). A transfer set without labels
    (``distill.transfer.labels: false``) builds it with ``hard_weight`` 0: soft targets alone."""
    d = recipe.distill if loss is None else dataclasses.replace(recipe.distill, loss=loss)
    if d.transfer.active and not d.transfer.labels:  # soft targets alone: the labels are not shown
        d = dataclasses.replace(d, hard_weight=0.0)
    return build_method(d.method, d, d.sections.get(d.method))


def run_distill(
    recipe: Recipe,
    teacher: FrozenTeacher | nn.Module | str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    data: Optional[DatasetSplits] = None,
    out: Any = None,
    progress: Optional[bool] = None,
    resume: bool = False,
    teacher_cache: Optional[str | os.PathLike] = None,
    log: Optional[Callable[[str], None]] = None,
    verbose: bool = False,
    teacher_online: bool = False,
    callbacks: Sequence[Optional[Callback]] = (),
) -> RunResult:
    """Distill the recipe's student from ``teacher``: a model, a checkpoint path (or a list of them:
    their ensemble), or None for the recipe's teacher(s) from the teacher cache (trained and cached
    there on first use, like ``compare``; several ``teachers`` are averaged).

    ``log`` receives one line naming the teacher used and its test accuracy; ``callbacks``
    (:class:`~kdlab.train.callbacks.Callback`) see the run's loop, e.g. to time its steps.
    """
    method = distill_method(recipe)
    own_teacher = teacher is None and not method.needs.teacher  # e.g. self-ema: the student is its own teacher
    if teacher is None and not own_teacher:
        check_teacher_cache(teacher_cache)  # before loading data or training anything
    data = data or prepare_data(recipe)
    # the student's step, and the teacher's where it runs on every batch (features, augmentation)
    online = not (method.needs.logits_only and not recipe.augment) and not own_teacher
    plan_threads_for(recipe, data, "teacher" if online else "student")
    say = log or (lambda _msg: None)
    info: Dict[str, Any] = {}
    n_student = count_student_parameters(recipe, data)
    frozen: Optional[FrozenTeacher] = None
    if own_teacher:
        say(f"teacher: none trained or loaded; method {recipe.distill.method!r} is its own teacher")
        info["teacher"] = "none (the method's own)"
    elif teacher is None:
        with distributed.main_first():  # under torchrun rank 0 trains/caches the teacher alone, then the others load it
            cached = cached_teacher(recipe, data, teacher_cache, progress, say, why="no --teacher given",
                                    train=run_teacher, load=load_teacher)
        say(cached.describe())
        info.update(teacher_cache=str(cached.path), teacher_reused=cached.hit, teacher_test_acc=cached.test_acc)
        lasts = cached.checkpoints  # checked on --resume like a --teacher file
        if len(lasts) == 1:
            info.update(teacher_checkpoint=str(lasts[0].resolve()), teacher_sha256=file_digest(lasts[0]))
        else:
            info.update(teacher_checkpoints=[str(x.resolve()) for x in lasts], teacher_sha256s=[file_digest(x) for x in lasts],
                        teacher_member_test_accs=[m.test_acc for m in cached.members])
        frozen = cached.teacher
        _warn_if_smaller(count_parameters(frozen.model, trainable_only=False), n_student, "the recipe's teacher")
    elif isinstance(teacher, (list, tuple)):  # several checkpoints: their ensemble (a resumed multi-teacher run)
        members = [load_teacher(t, data, n_student).release() for t in teacher]
        frozen = FrozenTeacher(TeacherEnsemble(members))
        info.update(teacher_checkpoints=[str(Path(t).resolve()) for t in teacher], teacher_sha256s=[file_digest(t) for t in teacher])
        info["teacher_test_acc"] = evaluate(frozen, data.test, recipe.teacher.train.eval_batch_size)["acc"]
        say(f"teacher: mean of {len(members)} checkpoints, test acc {100 * info['teacher_test_acc']:.2f}% (measured now)")
    elif isinstance(teacher, (str, os.PathLike)):
        frozen = load_teacher(teacher, data, n_student)  # a missing or unsafe file fails here, in one line
        info.update(teacher_checkpoint=str(Path(teacher).resolve()), teacher_sha256=file_digest(teacher))  # checked on --resume
        info["teacher_test_acc"] = evaluate(frozen, data.test, recipe.teacher.train.eval_batch_size)["acc"]
        say(f"teacher: checkpoint {teacher}, test acc {100 * info['teacher_test_acc']:.2f}% (measured now on {data.name})")
    else:  # a model the caller holds (and has measured)
        frozen = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher)
        _warn_if_smaller(count_parameters(frozen.model, trainable_only=False), n_student, "the teacher")
    return train_role(recipe, "student", "distill", data, method, out, frozen, progress, resume, info, callbacks=callbacks,
                      verbose=verbose, teacher_online=teacher_online, signal_cache=teacher_cache)
