"""``kdlab compare``: several KD loss codings — or several methods — × several seeds, fair by construction.

Fairness is structural, not a convention: one teacher (cached), one teacher signal, and for
seed ``s`` every variant's student starts from the same weights (``build_role_model``) and sees
the same batches in the same order (``BatchIndexer(seed=s)``); variants differ only in the loss.
A scratch student (hard labels only) is always trained as the baseline.

The teacher signal is computed once for the whole study: on plain batches the training set's
teacher logits; with augmentation, or with feature methods, one stored teacher signal
(:mod:`kdlab.study.shared_signals`) holding the logits and every feature the study's methods read,
on replayed views that every variant and seed shares.

Variants are soft-loss codings of Hinton KD (``--losses``) or registered methods (``--methods``,
each with the recipe's ``distill.<method>`` section). Variants whose step has a closed form (CE,
Hinton KD with any marked coding), logits methods without one (DKD, vmapped through autograd) and
feature methods without parameters of their own (attention transfer, reading the store's energy
maps; RKD, its loss called per seed) train together in one batched step, augmented or not; the
others (FitNets' adapters, CRD's heads and memory bank, several teachers, a method that is its own
teacher) train one by one on the same trainer, reading the same store; the report's notes say why
for each.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from torch import Tensor, nn

from ..config import Recipe
from ..data.augment import AugmentConfig
from ..data import DatasetSplits
from ..errors import ConfigError
from ..losses import SOFT_LOSSES
from ..methods import CE, KD, METHODS, Distiller, build_method
from ..data.subset import describe_subset
from ..pipeline import (build_role_model, load_teacher, plan_threads_for, prepare_data, run_teacher, signals_plan,
                        student_data, train_role)
from ..train.loop import tensorboard_callback
from ..train.stages import check_stages
from ..train.build import grid_method_reason, grid_train_blocker
from ..train.run import fit_grid
from ..train.students import grid_blocker, grid_cost_reason
from ..train.weights import WeightPlan
from .shared_signals import reads_shared_store, shared_store
from .stats import PairedComparison, Summary, epochs_to_reach, paired, summarize
from ..teacher_cache import cached_teacher

if TYPE_CHECKING:
    from ..ship.profile import Profile

SCRATCH = "scratch"
REFERENCE = "hinton"


@dataclass
class StudentRun:
    variant: str
    seed: int
    history: List[Dict[str, Any]]
    step_losses: Tensor  # (steps, 1 + terms): total, then the method's terms in order
    best_epoch: int
    best_metric: str
    wall_seconds: float

    def curve(self, key: str = "test_acc") -> List[float]:
        return [float(h[key]) for h in self.history]

    @property
    def final_acc(self) -> float:
        return float(self.history[-1]["test_acc"])

    @property
    def best_epoch_acc(self) -> float:
        """Test accuracy at the best epoch (chosen on validation data when there is a split)."""
        return float(self.history[self.best_epoch - 1]["test_acc"])

    def last_epoch_steps(self) -> Tensor:
        steps_per_epoch = self.step_losses.shape[0] // len(self.history)
        return self.step_losses[-steps_per_epoch:]


@dataclass
class VariantSummary:
    variant: str
    final_acc: Summary
    best_epoch_acc: Summary
    epochs_to_target: Optional[float]  # mean over the seeds that reached it
    reached_target: int
    loss_std_last_epoch: float  # per-step total-loss std in the last epoch, mean over seeds
    negative_loss_steps: float  # per run, mean over seeds
    wall_seconds: float  # per run, mean over seeds


@dataclass
class CompareResult:
    recipe: Recipe
    variants: List[str]
    seeds: List[int]
    runs: Dict[tuple, StudentRun]
    teacher: Dict[str, Any]
    target_acc: float
    mode: str  # "batched", "one by one", or "partly batched"
    wall_seconds: float
    notes: List[str] = field(default_factory=list)
    profile: Optional[Profile] = None  # teacher vs student cost, measured after the study

    def run(self, variant: str, seed: int) -> StudentRun:
        return self.runs[(variant, seed)]

    def of(self, variant: str) -> List[StudentRun]:
        return [self.runs[(variant, s)] for s in self.seeds]

    def summary(self, variant: str) -> VariantSummary:
        runs = self.of(variant)
        reached = [e for e in (epochs_to_reach(r.curve(), self.target_acc) for r in runs) if e is not None]
        last = [r.last_epoch_steps()[:, 0] for r in runs]
        stds = [float(x.std()) if x.shape[0] > 1 else 0.0 for x in last]
        return VariantSummary(
            variant=variant,
            final_acc=summarize([r.final_acc for r in runs]),
            best_epoch_acc=summarize([r.best_epoch_acc for r in runs]),
            epochs_to_target=sum(reached) / len(reached) if reached else None,
            reached_target=len(reached),
            loss_std_last_epoch=sum(stds) / len(stds),
            negative_loss_steps=sum(int((r.step_losses[:, 0] < 0).sum()) for r in runs) / len(runs),
            wall_seconds=sum(r.wall_seconds for r in runs) / len(runs),
        )

    def paired_vs_reference(self, variant: str) -> Optional[PairedComparison]:
        """Final-accuracy difference ``variant − hinton`` over matched seeds (None without hinton)."""
        if REFERENCE not in self.variants or variant == REFERENCE:
            return None
        return paired([r.final_acc for r in self.of(variant)], [r.final_acc for r in self.of(REFERENCE)])


def _parse(names: Sequence[str] | str, registry: Any, flag: str, example: str) -> List[str]:
    """``scratch`` first, then each name once, in the given order; unknown names fail early, in one line."""
    items = [x.strip() for x in (names.split(",") if isinstance(names, str) else names) if x.strip()]
    if not items:
        raise ConfigError(f"{flag} is empty; name at least one, e.g. {flag} {example}")
    variants = [SCRATCH]
    for name in items:
        if name != SCRATCH:
            registry.get(name)  # raises a one-line error listing the registered names
        if name not in variants:
            variants.append(name)
    return variants


def parse_variants(losses: Sequence[str] | str) -> List[str]:
    """Loss-coding variants: ``scratch`` first, then each named coding once."""
    return _parse(losses, SOFT_LOSSES, "--losses", "hinton,softmax-input")


def parse_methods(methods: Sequence[str] | str) -> List[str]:
    """Method variants: ``scratch`` first, then each named method once (see ``kdlab methods``)."""
    return _parse(methods, METHODS, "--methods", "hinton,fitnets")


def _method(recipe: Recipe, variant: str, by_method: bool = False) -> Distiller:
    """``scratch``: cross-entropy only; with ``by_method`` the registered method ``variant`` (its recipe
    section applies); otherwise ``variant`` is a coding: Hinton KD with it and the recipe's T/weights."""
    d = recipe.distill
    if variant == SCRATCH:
        return CE()
    if by_method:
        return build_method(variant, d, d.sections.get(variant))
    return KD(coding=variant, temperature=d.temperature, hard_weight=d.hard_weight, soft_weight=d.soft_weight)


def _why_single(recipe: Recipe, variant: str, blocker: Optional[str], online: bool) -> Optional[str]:
    """Why ``variant`` trains one by one, in the user's words (None: it can be batched)."""
    if recipe.distill.stages and variant != SCRATCH:
        return "staged"
    if blocker is not None:
        return blocker
    if online:
        return "teacher_signals.online: the batches are augmented afresh and the teacher runs on each one"
    return None


def _one_by_one(reasons: Dict[str, str], verb: str) -> str:
    """``a, b <verb> one by one (why); c <verb> one by one (why)``, grouped by reason, in the variants' order."""
    groups: Dict[str, List[str]] = {}
    for v, why in reasons.items():
        groups.setdefault(why, []).append(v)
    return "; ".join(f"{', '.join(vs)} {verb} one by one ({why})" for why, vs in groups.items())


def compare(
    recipe: Recipe,
    losses: Sequence[str] | str | None,
    seeds: int = 5,
    *,
    methods: Sequence[str] | str | None = None,
    data: Optional[DatasetSplits] = None,
    teacher_cache: Optional[str | os.PathLike] = None,
    batched: Optional[bool] = None,
    target_acc: Optional[float] = None,
    progress: Optional[bool] = None,
    log=print,
    tensorboard_dir: Optional[str | os.PathLike] = None,
    profile: bool = True,
) -> CompareResult:
    """Train the teacher once, then a scratch student and one student per loss (or per method), for each seed.

    ``methods`` (instead of ``losses``) compares registered methods. ``batched=None`` trains the
    students in one batched step when the student allows it (no dropout, no buffers) and the grid
    computes their methods exactly (see the module docstring), the others one by one; ``True`` insists, ``False`` forbids.
    ``profile`` adds the teacher-vs-student cost table (:mod:`kdlab.ship.profile`), measured after
    the study's wall time is taken.
    ``target_acc`` defaults to the scratch students' mean final accuracy, so "epochs to target"
    reads as "epochs until the student matches what scratch training reaches at the end".
    ``tensorboard_dir``: one TensorBoard run per student, ``<dir>/<variant>-seed<k>``, so the
    variants overlay (when the student's ``train.tensorboard`` is on).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if (losses is None) == (methods is None):
        raise ConfigError("compare either loss codings (--losses) or methods (--methods), not both")
    by_method = methods is not None
    variants = parse_methods(methods) if by_method else parse_variants(losses)  # type: ignore[arg-type]
    if recipe.distill.transfer.active:
        raise ConfigError("kdlab compare trains every student on the same training set, so distill.transfer is not "
                          "supported here; use kdlab distill (or kdlab reproduce) for a transfer-set student")
    augmented = AugmentConfig.from_dict(recipe.augment).enabled
    seed_list = [recipe.seed + i for i in range(seeds)]
    start = time.perf_counter()
    data = data or prepare_data(recipe)
    cfg = recipe.student.train
    plan_threads_for(recipe, data, "student", models=len(variants) * len(seed_list))  # the batched grid's step
    # builds every variant's method, so a bad method section fails here, before the teacher trains
    methods = {v: _method(recipe, v, by_method) for v in variants}
    # every student of the study replays the same views, seeded by the recipe's seed (None: teacher online)
    plan = signals_plan(recipe, data, cfg.epochs, teacher_cache, recipe.seed)
    online = augmented and plan is None  # augmented batches with the teacher online: it must see every batch
    # staged variants train one by one: the batched step shares one optimizer with the scratch students
    # online: every batch is freshly augmented, the scratch students' too, so none of them is batched
    reasons = {v: why for v in variants if (why := _why_single(recipe, v, grid_method_reason(methods[v]), online))}
    if plan is None:  # teacher_signals.online on plain batches: a feature method's teacher runs on every batch
        reasons.update({v: "teacher_signals.online: the teacher runs on every batch for its features" for v in variants
                        if v not in reasons and methods[v].needs.teacher_features})
    single = list(reasons)
    if recipe.distill.stages:  # every staged variant's terms are checked before the teacher trains
        for v in single:
            check_stages(recipe.distill.stages, methods[v])
    if batched and single:
        raise ConfigError(f"cannot train the students batched: {_one_by_one(reasons, 'trains')}; drop --batched")
    cached = cached_teacher(recipe, data, teacher_cache, progress, log, train=run_teacher, load=load_teacher)
    log(cached.describe())
    # dataset.student_subset: one share for every student (the teacher had all of it), cut before the
    # study's store and shared logits are computed, so they cover exactly what the students read
    data, _ = student_data(recipe, data, None)
    # one store of every signal the study's students read from the teacher (augmented batches: the logits
    # too; plain batches: the features of the feature methods, and the logits every student shares)
    # (none when no method reads a single teacher's signals: a multi-teacher study's runs read their members' store)
    needs_store = plan is not None and any(reads_shared_store(m) and (augmented or not m.needs.logits_only)
                                           for m in methods.values())
    shared = shared_store(plan, list(methods.values()), cached.teacher, data, cfg) if needs_store else None  # type: ignore[arg-type]
    study_plan = shared.plan if shared is not None and shared.store is not None else plan
    if augmented and shared is not None and shared.store is None:  # it does not fit: the teacher runs online
        moved = [v for v in variants if v not in single and methods[v].needs.teacher]
        if batched and moved:
            raise ConfigError(f"cannot train the students batched: {shared.reason}; drop --batched")
        reasons.update({v: "the teacher runs online on the augmented batches: its store does not fit" for v in moved})
        single += moved
    if shared is not None:  # plain batches: a feature variant reads the teacher's features from the store
        moved = [v for v in variants if v not in single and methods[v].needs.teacher_features
                 and (shared.store is None or methods[v] in shared.left_out)]
        why = ("the teacher's features are read online: their store does not fit" if shared.store is None
               else "it reads a teacher layer in another form than an earlier variant, and the batched step holds "
                    "one form per layer")
        if batched and moved:
            raise ConfigError(f"cannot train the students batched: {', '.join(moved)}: {why}; drop --batched")
        reasons.update({v: why for v in moved})
        single += moved
    # the shared training-set logits (plain batches): the store's when there is one, so every student reads the same numbers
    logits = None
    if not augmented:
        logits = (shared.logits_table(data.train) if shared is not None and shared.store is not None
                  else cached.teacher.logits_for(data.train.x, recipe.teacher.train.eval_batch_size))
    recipes = {s: dataclasses.replace(recipe, seed=s) for s in seed_list}
    probe = build_role_model(recipe, "student", data)
    blocker = grid_blocker(probe) or grid_train_blocker(cfg)
    if batched and blocker:
        raise ConfigError(f"cannot train the students batched: {blocker}; drop --batched")
    # a stacked grid that would be slower: one by one, unless --batched insists (or nothing could batch anyway)
    slower = grid_cost_reason(probe) if blocker is None and batched is None and len(single) < len(variants) else None
    use_batch = (blocker is None and slower is None) if batched is None else batched
    notes: List[str] = []
    if "student_subset" in data.info:
        notes.append(describe_subset(data.info["student_subset"]))
    if batched is None and (blocker or slower):
        notes.append(f"students trained one by one because {blocker or slower}" + (" (--batched insists)" if slower else ""))
    batch_variants = [v for v in variants if v not in single] if use_batch else []
    if use_batch and single:
        notes.append(f"{_one_by_one(reasons, 'trained')}" + ("; the others batched" if batch_variants else ""))
    runs: Dict[tuple, StudentRun] = {}
    stores: Dict[str, Dict[str, Any]] = {}  # stores outside the study's shared one (a run it does not cover)
    readers = 0  # student runs reading the shared store (directly, or its logits as the shared table)
    shared_path = str(shared.store.path) if shared is not None and shared.store is not None else None
    tb_names = [f"{v}-seed{s}" for s in seed_list for v in batch_variants]  # seed-major, like the batched records

    def tensorboard(names: List[str]):
        return tensorboard_callback(Path(tensorboard_dir), cfg, names) if tensorboard_dir is not None else None

    if batch_variants:
        grid = [[build_role_model(recipes[s], "student", data) for s in seed_list] for _ in batch_variants]
        # augmented batches, or a feature method: the grid reads the study's store (plain batches: its view 0)
        stored = augmented or any(methods[v].needs.teacher_features for v in batch_variants)
        t0 = time.perf_counter()
        results = fit_grid(grid, [methods[v] for v in batch_variants], seed_list, data, cfg,
                           teacher_logits=logits, teacher=cached.teacher if stored else None,
                           signals=study_plan if stored else None, weight_plan=WeightPlan(cfg.epochs, recipe.distill),
                           callbacks=[tensorboard(tb_names)], progress=progress)
        share = (time.perf_counter() - t0) / (len(batch_variants) * len(seed_list))
        if shared_path is not None:
            readers += sum(len(seed_list) for v in batch_variants if methods[v].needs.teacher)
        for v, row in zip(batch_variants, results):
            for s, fr in zip(seed_list, row):
                runs[(v, s)] = StudentRun(v, s, fr.history, fr.step_losses, fr.best_epoch, fr.best_metric, share)
    for v in (v for v in variants if v not in batch_variants):
        for s in seed_list:
            t0 = time.perf_counter()
            method = _method(recipe, v, by_method)
            needs = method.needs
            # logits alone on plain batches: the shared logits; else the teacher, its signals read from the
            # study's store (the same views for every seed and variant)
            tabled = needs.teacher and needs.logits_only and not needs.teacher_members and not augmented
            r = train_role(
                recipes[s], "student", v, data, method, out=False, progress=progress,
                teacher=cached.teacher if needs.teacher and not tabled else None,
                teacher_logits=logits if tabled else None, callbacks=[tensorboard([f"{v}-seed{s}"])],
                signal_cache=teacher_cache, signal_seed=recipe.seed, signals=study_plan,
            )
            f = r.fit
            store = f.extra.get("teacher_signals")
            if shared_path is not None and (tabled or (store is not None and store.get("path") == shared_path)):
                readers += 1
            elif store is not None and store.get("path"):
                stores.setdefault(store["path"], {"bytes": store["bytes"], "seconds": 0.0, "runs": 0})
                stores[store["path"]]["runs"] += 1
                stores[store["path"]]["seconds"] += store["compute_seconds"]
            runs[(v, s)] = StudentRun(v, s, f.history, f.step_losses, f.best_epoch, f.best_metric, time.perf_counter() - t0)
            log(f"{v} seed {s}: final test acc {100 * r.final_acc:.2f}%")
    if shared is not None:
        notes.append(shared.note(readers))
    for path, info in stores.items():
        notes.append(f"teacher signal store {Path(path).name}: {info['bytes'] / 1e6:.1f} MB, "
                     f"{'computed in ' + format(info['seconds'], '.1f') + ' s' if info['seconds'] else 'reused from an earlier run'}, "
                     f"read by {info['runs']} student run(s)")
    if target_acc is None:
        target_acc = summarize([runs[(SCRATCH, s)].final_acc for s in seed_list]).mean
    teacher_info = {"path": str(cached.path), "reused": cached.hit, "test_acc": cached.test_acc}
    result = CompareResult(
        recipe, variants, seed_list, runs, teacher_info, float(target_acc),
        ("batched" if not single else "partly batched") if batch_variants else "one by one", time.perf_counter() - start, notes,
    )
    if profile:
        result.profile = compare_profile(result, cached.teacher.model, probe, data.in_shape)
    return result


def compare_profile(result: CompareResult, teacher: nn.Module, student: nn.Module, in_shape: Sequence[int],
                    min_seconds: float = 0.05) -> Profile:
    """The profile a ``kdlab compare`` report shows: its teacher beside the student architecture, with
    the teacher's accuracy and the mean final accuracy of the reference variant (``hinton``, else the last)."""
    from ..ship.profile import profile_models  # start-up time: the CLI imports this module at start (kdlab demo)

    variant = REFERENCE if REFERENCE in result.variants else result.variants[-1]
    accs = [r.final_acc for r in result.of(variant)]
    r = result.recipe
    return profile_models(teacher, student, in_shape, source=f"compare {r.name} (student accuracy: `{variant}`, mean of {len(accs)} seeds)",
                          names=(r.teacher.model.name, r.student.model.name),
                          accuracies=(result.teacher.get("test_acc"), sum(accs) / len(accs)), min_seconds=min_seconds)
