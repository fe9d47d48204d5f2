"""The recipe schema: typed dataclasses, coercion of plain values into them, and range checks.

Every problem becomes a one-line :class:`ConfigError` naming the offending key
(``teacher.train.epochs: expected int, got 'ten'``), so a typo never surfaces as a traceback
twenty minutes into a run. This module knows types and ranges only; which names exist (models,
losses, methods, datasets) is checked against the registries by :mod:`kdlab.recipes`, which also
reads YAML and applies ``key.path=value`` overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .errors import ConfigError

# Upper bounds for integers: sizes must fit a C int (torch shapes, DataLoader indices) and seeds the
# range every seeded library accepts (numpy's legacy seeding and Optuna's samplers: 0 .. 2**32 - 1).
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """The allowed range of one kind of parameter, defined once and attached to every dataclass
    field it governs (``field(metadata={"rule": POSITIVE})``): the recipe check, ``kdlab.distill``'s
    argument check and the loss functions all test the same predicate and name the range in the
    same words.

    ``bound`` is the range alone (``> 0``), ``text`` the phrase messages use (``a finite number > 0``).
    """

    holds: Callable[[Any], bool]
    text: str
    bound: str = ""

    def check(self, value: Any, key: str, fix: Optional[str] = None, *, got: bool = True) -> None:
        """``key: must be <text>, got <value>[; fix]`` (a recipe key, or ``name=value`` with ``got=False``)."""
        if not self.holds(value):
            raise ConfigError(f"{key}: must be {self.text}" + (f", got {short_repr(value)}" if got else "") + (f"; {fix}" if fix else ""))

    def check_argument(self, value: Any, where: str, fix: Optional[str] = None) -> None:
        """``<where> must be <bound> (and finite), got <value>[; fix]``: a function argument (``T``, ``-T``)."""
        if not self.holds(value):
            raise ConfigError(f"{where} must be {self.bound or self.text}{' (and finite)' if self.bound else ''}, "
                              f"got {short_repr(value)}" + (f"; {fix}" if fix else ""))


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# NaN fails every comparison and inf passes ``> 0``: each rule tests finiteness explicitly.
POSITIVE = Rule(lambda v: _real(v) and v > 0, "a finite number > 0", "> 0")
NON_NEGATIVE = Rule(lambda v: _real(v) and v >= 0, "a finite number >= 0", ">= 0")
#: dropout rates, momentum, held-out fractions
FRACTION = Rule(lambda v: _real(v) and 0.0 <= v < 1.0, "a number in [0, 1)")


def count_rule(high: int = MAX_COUNT) -> Rule:
    """An integer in [1, high]; huge values would overflow torch's C integers deep inside a run."""
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high, f"an integer in [1, {high}]")


COUNT = count_rule()


def ruled(default: Any, rule: Rule) -> Any:
    """A dataclass field with a default and its :class:`Rule`."""
    return field(default=default, metadata={"rule": rule})


def rule_of(cls: Any, name: str) -> Rule:
    """The rule attached to field ``name`` of dataclass ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata["rule"]
    raise KeyError(f"{cls.__name__} has no field {name!r}")  # pragma: no cover - a programming error


def check_value(cls: Any, name: str, value: Any, key: Optional[str] = None, fix: Optional[str] = None) -> None:
    """Check ``value`` against the rule of ``cls.name``; the message names ``key`` (default: ``name``)."""
    rule_of(cls, name).check(value, key or name, fix)


def check_rules(obj: Any, prefix: str = "") -> None:
    """Every ruled field of dataclass ``obj`` (and of the dataclasses it holds), keys ``prefix + name``;
    an optional field left ``None`` is not checked."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rule = f.metadata.get("rule")
        if rule is not None and value is not None:
            rule.check(value, prefix + f.name)
        elif dataclasses.is_dataclass(value):
            check_rules(value, f"{prefix}{f.name}.")


FRACTION_OF_ALL = Rule(lambda v: _real(v) and 0.0 < v <= 1.0, "a number in (0, 1]")
SEED = Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")


@dataclass
class StudentSubsetConfig:
    """The share of the training split the students learn from (small-data studies): every student,
    scratch or distilled, trains on ``fraction`` of each class's training examples (at least one per
    class), drawn with ``seed`` alone, so every run and every seed of a study sees the same examples.
    The teacher still trains on the whole split; validation and test splits are untouched."""

    fraction: float = ruled(1.0, FRACTION_OF_ALL)
    seed: int = ruled(0, SEED)

    @property
    def active(self) -> bool:
        """False when the students train on the whole training split."""
        return self.fraction < 1.0


@dataclass
class DatasetConfig:
    name: str = "digits"
    data_dir: Optional[str] = None
    download: bool = True
    val_fraction: float = ruled(0.0, FRACTION)
    # The students' share of the training split (see StudentSubsetConfig); default: all of it.
    student_subset: StudentSubsetConfig = field(default_factory=StudentSubsetConfig)


@dataclass
class ModelConfig:
    """``name`` picks a registered model; every other key is passed to its builder."""

    name: str = "mlp"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = ruled(1e-3, POSITIVE)
    weight_decay: float = ruled(0.0, NON_NEGATIVE)
    momentum: float = ruled(0.9, FRACTION)


@dataclass
class SchedulerConfig:
    """``step``: LR × ``gamma`` every ``step_size`` epochs; ``multistep``: LR × ``gamma`` at each of
    the epochs in ``milestones`` (CRD's CIFAR schedule: [150, 180, 210], 0.1)."""

    name: str = "constant"
    step_size: int = ruled(10, COUNT)
    gamma: float = ruled(0.1, POSITIVE)
    milestones: List[int] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = ruled(10, COUNT)
    batch_size: int = ruled(128, COUNT)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: Optional[float] = ruled(None, POSITIVE)
    eval_batch_size: int = ruled(2000, COUNT)
    # fp32 | bf16 | fp16 | auto: torch.autocast for the forward passes (bf16 on CPU; fp16 with a
    # GradScaler or bf16 on CUDA; auto = bf16 where the hardware has it, else fp32 on CPU / fp16 on
    # CUDA). Loss terms are always computed in fp32.
    precision: str = "fp32"
    # Micro-batches of ``batch_size`` per optimizer step: effective batch = batch_size × accumulate_steps.
    accumulate_steps: int = ruled(1, count_rule(2**16))
    # Linear LR warm-up over the first epochs (from lr/(w+1) up to lr), then the scheduler.
    warmup_epochs: int = 0
    # torch.set_flush_denormal(True) while training (subnormal weights/moments slow CPU steps down).
    flush_denormal: bool = True
    # Model weights (and 4-D inputs) in channels_last memory format: true | false | auto (on for
    # convolutional models on a CPU, and on CUDA under autocast; see kdlab.train.precision).
    channels_last: Union[bool, str] = "auto"
    # Write TensorBoard event files into the run folder (when the tensorboard package is installed).
    tensorboard: bool = True
    # Max-norm weight constraint (Srivastava et al. 2014): after every optimizer step each row of
    # every nn.Linear weight (one unit's incoming weights) is scaled down to L2 norm <= max_norm.
    max_norm: Optional[float] = ruled(None, POSITIVE)


@dataclass
class RoleConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Teachers only: a trained checkpoint to distill from instead of training ``model`` (e.g. the
    # student's own earlier run, for self-distillation). Loaded safely; its model spec is its own.
    checkpoint: Optional[str] = None
    # Teachers only: per-sample augmentation of the teacher's own training batches, the schema of
    # the top-level ``augment`` (kdlab.data.augment.AugmentConfig); empty: un-augmented. Part of
    # the teacher cache key; checked when the recipe is resolved.
    augment: Dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightScheduleConfig:
    """How hard/soft weights move over epochs; their sum stays ``hard_weight + soft_weight``.

    ``constant``; ``cosine``: hard = sum·0.5·(1 + cos(π·e/E)); ``exp``: hard = hard_weight·exp(−rate·e).
    """

    name: str = "constant"
    rate: float = ruled(0.1, NON_NEGATIVE)


@dataclass
class TemperatureScheduleConfig:
    """``constant``, or ``linear``: T = max(min, T0 − step·e)."""

    name: str = "constant"
    min: float = ruled(1.0, POSITIVE)
    step: float = ruled(0.0, NON_NEGATIVE)


@dataclass
class StageConfig:
    """One stage of a staged run (``distill.stages``): ``epochs`` (the last stage may omit it and
    runs to the end), ``terms`` the weighted loss terms of the method that train in it (terms not
    listed weigh 0; none listed: the method's configured weights), ``reset_optimizer`` to start the
    stage with fresh optimizer state (moments, momentum); ``name`` is recorded with the index."""

    name: Optional[str] = None
    epochs: Optional[int] = None
    terms: Dict[str, float] = field(default_factory=dict)
    reset_optimizer: bool = False


@dataclass
class TransferConfig:
    """The distilled student's transfer set: the training examples it learns from (Hinton et al.
    2015 §3). Default: the whole training set, with labels.

    ``classes`` keeps only these class indices, ``exclude_classes`` drops these (one or the other);
    ``fraction`` then keeps a seeded random share of what remains; ``labels: false`` trains on the
    teacher's soft targets alone (the hard term's weight becomes 0), as for an unlabelled transfer set.
    """

    classes: Optional[List[int]] = None
    exclude_classes: List[int] = field(default_factory=list)
    fraction: float = ruled(1.0, FRACTION_OF_ALL)
    labels: bool = True

    @property
    def active(self) -> bool:
        """False when the transfer set is the labelled training set itself."""
        return self.classes is not None or bool(self.exclude_classes) or self.fraction < 1.0 or not self.labels


@dataclass
class DistillConfig:
    """How the student learns from the teacher.

    ``method`` names a registered method (``hinton``: total = hard_weight · CE + soft_weight ·
    loss(student, teacher, T); ``fitnets``, ``at``, …). A method's own parameters live in a section
    named after it (``distill.fitnets: {pairs: …}``), kept here as plain data in ``sections`` and
    validated against the method's dataclass when the recipe is resolved.
    """

    method: str = "hinton"
    loss: str = "hinton"
    temperature: float = ruled(4.0, POSITIVE)
    hard_weight: float = ruled(0.5, NON_NEGATIVE)
    soft_weight: float = ruled(0.5, NON_NEGATIVE)
    weight_schedule: WeightScheduleConfig = field(default_factory=WeightScheduleConfig)
    temperature_schedule: TemperatureScheduleConfig = field(default_factory=TemperatureScheduleConfig)
    # Progressive training: a list of stages (see StageConfig); empty: one stage, the method as configured.
    stages: List[StageConfig] = field(default_factory=list)
    # The examples the distilled student trains on (see TransferConfig); default: the training set.
    transfer: TransferConfig = field(default_factory=TransferConfig)
    sections: Dict[str, Dict[str, Any]] = field(default_factory=dict)


PRECISIONS = ("fp32", "bf16", "fp16", "auto")

_DISTILL_FIELDS = frozenset(f for f in DistillConfig.__dataclass_fields__ if f != "sections")


@dataclass
class Recipe:
    name: str = "custom"
    seed: int = 0
    out_dir: str = "runs"
    # cpu (the tested default), cuda, cuda:N, or auto (cuda when available, else cpu)
    device: str = "cpu"
    # Python modules imported before names are resolved, so models, datasets, losses and methods a
    # user registers in their own package are usable from recipes and the command line.
    imports: List[str] = field(default_factory=list)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    teacher: RoleConfig = field(default_factory=RoleConfig)
    # Several teachers (each trained and cached like ``teacher``); when given, they replace
    # ``teacher`` and the student learns from the mean of their logits.
    teachers: List[RoleConfig] = field(default_factory=list)
    student: RoleConfig = field(default_factory=RoleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # Per-sample augmentation of the students' training batches (kdlab.data.augment.AugmentConfig:
    # crop, flip, autoaugment, randaugment, mixup, cutmix); checked when the recipe is resolved.
    augment: Dict[str, Any] = field(default_factory=dict)
    # The stored teacher signal (kdlab.train.stored.TeacherSignalsConfig: views, dtype, max_gb, top_k, precision,
    # online): used whenever the teacher would run on every batch; checked when the recipe is resolved.
    teacher_signals: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return _to_plain(self)


# ---------------------------------------------------------------------------------------------
# validation


# A decimal number as YAML 1.2 (and JSON, and Python's float()) reads it, so ``lr: 1e-4`` is a float.
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# The spellings Python's float() accepts for non-finite values (argparse flags and tune ranges use it).
_NON_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity|\.nan|\.inf)", re.IGNORECASE)

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        named = " or ".join(_type_name(a) for a in args)
        return named + " or null" if type(None) in typing.get_args(tp) else named
    if origin in (list, List, Sequence):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:  # Optional[X]: X's own message
            return _coerce(value, inner[0], where)
        for tp_i in inner:  # bool or str: the first type that takes the value
            try:
                return _coerce(value, tp_i, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {short_repr(value)}")
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and (_DECIMAL.fullmatch(value.strip()) or _NON_FINITE.fullmatch(value.strip())):
            # YAML 1.1 reads 1e-4 (no dot) and nan/inf as strings; users mean numbers. Non-finite ones
            # are refused by the range checks, with the allowed range in the message.
            value = float(value.strip().replace(".", "", 1) if _NON_FINITE.fullmatch(value.strip()) else value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond float range, e.g. 1e400 written out in digits
                raise ConfigError(f"{where}: must be a finite number, got an integer with {len(str(value))} digits") from None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (dict, Dict):
        if isinstance(value, dict):
            return dict(value)
    elif origin in (list, List):
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - schema error, not user error
        raise TypeError(f"unsupported config type {tp}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {short_repr(value)}")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def short_repr(value: Any) -> str:
    """repr cut to one readable piece: a pasted list, a huge number or binary junk must not flood
    the error line (reprlib also stops a self-referencing YAML alias from expanding)."""
    return _REPR.repr(value)


def build_section(cls: Any, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if cls is ModelConfig and isinstance(data, str):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}; write {where}.name: {data}")
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of keys, got {short_repr(data)}")
    prefix = f"{where}." if where else ""
    if cls is DistillConfig:  # mappings under unknown keys are method sections (checked by name later)
        data = dict(data)
        sections = {k: data.pop(k) for k in list(data) if k not in _DISTILL_FIELDS and isinstance(data[k], dict)}
        if "sections" in data:
            raise ConfigError(f"{prefix}sections: not a key; write a method's parameters as distill.<method>: {{...}}")
        built = _build_fields(cls, data, prefix)
        built.sections = {k: dict(v) for k, v in sections.items()}
        return built
    if cls is ModelConfig:
        data = dict(data)
        name = data.pop("name", ModelConfig.name)
        if not isinstance(name, str):
            raise ConfigError(f"{prefix}name: expected str, got {name!r}")
        return ModelConfig(name=name, params=data)
    return _build_fields(cls, data, prefix)


def _build_fields(cls: Any, data: Dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sections"]
    kwargs = {}
    for key, value in data.items():
        if key not in hints or key == "sections":
            raise ConfigError(f"{prefix}{key}: unknown key; valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def non_negative(value: float, key: str) -> None:
    """A finite number >= 0 (stage weights: a dict of terms, no field to attach a rule to)."""
    NON_NEGATIVE.check(value, key)


def count(value: int, key: str, high: int = MAX_COUNT) -> None:
    """An integer in [1, high] (a stage's epochs)."""
    (COUNT if high == MAX_COUNT else count_rule(high)).check(value, key)


def _check_ranges(r: Recipe) -> None:
    if not 0 <= r.seed <= MAX_SEED:
        raise ConfigError(f"seed: must be an integer in [0, {MAX_SEED}] (the range numpy and Optuna accept), got {short_repr(r.seed)}")
    _check_text(r)
    check_rules(r.distill, "distill.")  # temperature, weights, schedules
    if r.distill.hard_weight == 0 and r.distill.soft_weight == 0:
        raise ConfigError("distill.hard_weight and distill.soft_weight are both 0; nothing would be trained")
    if not math.isfinite(r.distill.hard_weight + r.distill.soft_weight):
        raise ConfigError("distill.hard_weight + distill.soft_weight overflows to inf; use weights that sum to about 1")
    check_rules(r.dataset, "dataset.")
    check_transfer(r.distill)
    check_stage_epochs(r.distill.stages, r.student.train.epochs)
    if r.student.checkpoint is not None:
        raise ConfigError("student.checkpoint: only teachers take a checkpoint (teacher.checkpoint or teachers[i].checkpoint); "
                          "the student always starts from fresh weights")
    if r.student.augment:
        raise ConfigError("student.augment: the students' batches are augmented by the top-level augment section; "
                          "move these keys there (teacher.augment is the teacher's own)")
    for role, rc in role_configs(r):
        if rc.checkpoint is not None and (not rc.checkpoint.strip() or "\0" in rc.checkpoint):
            raise ConfigError(f"{role}.checkpoint: must be a path to a .pt file, got {rc.checkpoint!r}")
    for role, rc in role_configs(r):
        t: TrainConfig = rc.train
        check_rules(t, f"{role}.train.")  # sizes, optimizer and scheduler numbers, grad_clip
        check_precision(t.precision, f"{role}.train.precision", r.device)
        if t.channels_last not in (True, False, "auto"):
            raise ConfigError(f"{role}.train.channels_last: expected true, false or auto, got {short_repr(t.channels_last)}")
        check_scheduler(t.scheduler, f"{role}.train.scheduler")
        if not 0 <= t.warmup_epochs < t.epochs:
            raise ConfigError(f"{role}.train.warmup_epochs: must be an integer in [0, epochs - 1] = [0, {t.epochs - 1}], "
                              f"got {short_repr(t.warmup_epochs)}")


def check_scheduler(cfg: SchedulerConfig, key: str) -> None:
    """``milestones``: strictly increasing epochs >= 1; ``multistep`` needs them and a ``gamma`` in (0, 1]."""
    ms = cfg.milestones
    example = "e.g. [150, 180, 210]"
    if not isinstance(ms, list) or any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_COUNT for m in ms):
        raise ConfigError(f"{key}.milestones: expected a list of epochs (integers >= 1), {example}, got {short_repr(ms)}")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ConfigError(f"{key}.milestones: epochs must be strictly increasing, {example}, got {short_repr(ms)}")
    if cfg.name == "multistep":
        if not ms:
            raise ConfigError(f"{key}.milestones: the multistep scheduler needs the epochs at which to decay, {example}")
        if not cfg.gamma <= 1:
            raise ConfigError(f"{key}.gamma: multistep multiplies the LR by gamma at each milestone; use a number in (0, 1] "
                              f"(e.g. 0.1), got {short_repr(cfg.gamma)}")
def check_transfer(d: DistillConfig) -> None:
    """Class lists of ``distill.transfer`` are distinct integers >= 0, one of the two lists only, and
    an unlabelled transfer set leaves a soft term to train (class indices are checked against the
    dataset when it is loaded: :func:`kdlab.data.transfer.transfer_indices`)."""
    t, key = d.transfer, "distill.transfer"
    if t.classes is not None and t.exclude_classes:
        raise ConfigError(f"{key}: give classes (keep only these) or exclude_classes (drop these), not both")
    for name in ("classes", "exclude_classes"):
        values = getattr(t, name) or []
        if any(v < 0 for v in values):
            raise ConfigError(f"{key}.{name}: class indices must be integers >= 0, got {short_repr(values)}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}.{name}: a class is listed twice in {short_repr(values)}; list each once")
    if t.classes is not None and not t.classes:
        raise ConfigError(f"{key}.classes: an empty list keeps no example; list the classes to keep, or remove the key")
    if not t.labels and d.soft_weight == 0:
        raise ConfigError(f"{key}.labels is false (soft targets alone) but distill.soft_weight is 0; nothing would be "
                          "trained; set distill.soft_weight > 0")


def check_precision(value: str, key: str, device: str = "cpu") -> None:
    """One of :data:`PRECISIONS`; fp16 is refused on the CPU (bf16 is the CPU's half format)."""
    if value not in PRECISIONS:
        raise ConfigError(f"{key}: unknown precision {short_repr(value)}; valid: {', '.join(PRECISIONS)}")
    if value == "fp16" and str(device).strip().lower() == "cpu":
        raise ConfigError(f"{key}: fp16 needs a CUDA device (device is cpu); use bf16 on the CPU")


def check_stage_epochs(stages: List[StageConfig], epochs: int) -> None:
    """Stage lengths fit the student's epochs; stage weights are finite numbers >= 0 (term names are
    checked against the method when it is built: :func:`kdlab.train.stages.check_stages`)."""
    for i, st in enumerate(stages):
        key = f"distill.stages[{i}]"
        if st.epochs is None and i < len(stages) - 1:
            raise ConfigError(f"{key}.epochs: every stage but the last needs its number of epochs")
        if st.epochs is not None:
            count(st.epochs, f"{key}.epochs")
        for term, w in st.terms.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ConfigError(f"{key}.terms.{term}: expected a number, got {short_repr(w)}")
            non_negative(float(w), f"{key}.terms.{term}")
        if st.terms and not any(float(w) > 0 for w in st.terms.values()):
            raise ConfigError(f"{key}.terms: every weight is 0; nothing would be trained in this stage")
    before_last = sum(st.epochs or 0 for st in stages[:-1])
    if stages and before_last >= epochs:
        raise ConfigError(f"distill.stages: the stages before the last take {before_last} epochs but the student trains "
                          f"{epochs}; shorten them or raise student.train.epochs")


def role_configs(r: Recipe) -> List[tuple]:
    """(key, RoleConfig) for the teacher(s) and the student, keyed as a message should name them."""
    teachers = [(f"teachers[{i}]", t) for i, t in enumerate(r.teachers)] or [("teacher", r.teacher)]
    return [*teachers, ("student", r.student)]


def _check_text(r: Recipe) -> None:
    """``name`` becomes part of a folder name and the paths must be openable: refuse what would fail later."""
    if not r.name.strip() or r.name.strip() in (".", "..") or any(c in r.name for c in "/\\") or not r.name.isprintable():
        raise ConfigError(f"name: must be a non-empty name usable in a folder name (no '/', '\\' or control "
                          f"characters), got {r.name!r}")
    for key, value in (("out_dir", r.out_dir), ("dataset.data_dir", r.dataset.data_dir)):
        if value is not None and ("\0" in value or (key == "out_dir" and not value.strip())):
            raise ConfigError(f"{key}: must be a usable folder path, got {value!r}")


def _check_all_finite(obj: Any, where: str = "") -> None:
    """Safety net behind the range checks: no float field anywhere may be NaN or infinite."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_all_finite(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")


def schema_from_dict(data: Dict[str, Any]) -> Recipe:
    """The recipe's types, ranges and finiteness checked; names are resolved by :mod:`kdlab.recipes`."""
    recipe = build_section(Recipe, data, "")
    _check_ranges(recipe)
    _check_all_finite(recipe)
    return recipe


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, ModelConfig):
        return {"name": obj.name, **copy.deepcopy(obj.params)}
    if isinstance(obj, DistillConfig):
        plain = {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "sections"}
        return {**plain, **copy.deepcopy(obj.sections)}
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


