"""``kdlab.distill``: your own teacher, student and data, in a few lines.

    student = kdlab.distill(student, teacher, train_loader, val_loader, method="fitnets",
                            pairs={"layer2": "features.3"}, T=4, epochs=30).student

Any ``nn.Module`` pair and any ``DataLoader`` of ``(images, labels)`` (augment inside your
``Dataset``: the teacher then sees the same augmented batch). The teacher is used in eval mode
under ``no_grad`` and handed back exactly as it was given. Every run writes the usual run folder
(resolved settings, versions, per-epoch metrics, checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from .config import DistillConfig, OptimizerConfig, StageConfig, TrainConfig, build_section, check_stage_epochs, rule_of
from .data.loaders import IndexedDataset, LoaderSplits, unpack_batch
from .errors import ConfigError, KDLabError
from .features import eval_probe
from .logits import LOGITS_RULE, logits_of
from .methods import Distiller, build_method
from .models import count_parameters
from .teacher import FrozenTeacher, TeacherEnsemble
from .train import distributed
from .train.rundir import RunDir, new_run_dir, run_files
from .train.stages import check_stages
from .train.weights import WeightPlan
from .train.run import RunRecord, RunSpec
from .train.run import run as run_spec
from .utils import check_output_location, flatten_settings, seed_everything


@dataclass
class DistillResult:
    student: nn.Module
    history: List[Dict[str, Any]]
    path: Optional[Path]
    method: Distiller

    @property
    def final(self) -> Dict[str, Any]:
        return self.history[-1]


def _loader(data: Any, batch_size: int, shuffle: bool, seed: int) -> Optional[DataLoader]:
    if data is None or isinstance(data, DataLoader):
        return data
    ctx = distributed.context()
    if isinstance(data, Dataset) and shuffle and ctx is not None:  # under torchrun: this rank's share of each global batch
        distributed.check_batch_size(batch_size, ctx.world_size)
        sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        return DataLoader(data, batch_size=batch_size // ctx.world_size, sampler=sampler)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))
    raise ConfigError(f"expected a torch DataLoader or Dataset, got {type(data).__name__}")


def distill(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module] | None,
    train_loader: DataLoader | Dataset,
    val_loader: Optional[DataLoader | Dataset] = None,
    *,
    test_loader: Optional[DataLoader | Dataset] = None,
    method: str = "hinton",
    T: float = 4.0,
    hard_weight: float = 0.5,
    soft_weight: float = 0.5,
    loss: str = "hinton",
    epochs: int = 10,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    scheduler: str = "constant",
    grad_clip: Optional[float] = None,
    batch_size: int = 128,
    num_classes: Optional[int] = None,
    seed: int = 0,
    device: Optional[str | torch.device] = None,
    out: Optional[str | os.PathLike] = None,
    progress: Optional[bool] = None,
    stages: Optional[Sequence[Dict[str, Any]]] = None,
    resume: bool = False,
    **method_params: Any,
) -> DistillResult:
    """Distill ``teacher`` into ``student`` (trained in place) and return it with its history.

    ``method`` is a registered method (``hinton``, ``fitnets``, ``at``, …); its own parameters are
    keyword arguments (``pairs={...}``, ``weight=...``, ``hint_epochs=...``) validated against its
    dataclass. ``teacher`` may be a list of models (``multi-teacher`` weighs them; other methods
    learn from the mean of their logits) or None for a method that is its own teacher
    (``self-ema``); every teacher is handed back as it was given. ``stages``: a list of
    ``{"epochs": …, "terms": {term: weight}, "reset_optimizer": …}`` as in recipes.
    ``out`` is the run folder (default ``runs/distill-<timestamp>``; ``False``: none); ``resume=True``
    continues the run in ``out`` from its ``last.pt`` (same arguments as the run that wrote it).
    Datasets are wrapped in a shuffling ``DataLoader`` of ``batch_size``.
    """
    seed_everything(seed)
    dcfg = build_section(DistillConfig, {"loss": loss, "temperature": T, "hard_weight": hard_weight, "soft_weight": soft_weight}, "distill")
    train_cfg = build_section(TrainConfig, {
        "epochs": epochs, "batch_size": batch_size, "grad_clip": grad_clip, "tensorboard": False,
        "optimizer": {"name": optimizer, "lr": lr, "weight_decay": weight_decay}, "scheduler": {"name": scheduler},
    }, "train")
    _check_settings(dcfg, train_cfg)
    run_path = _check_out(out, resume)  # a folder holding a run is refused (unless resuming) before anything is built
    dev = _device(device)
    train = _loader(train_loader, batch_size, True, seed)
    val, test = _loader(val_loader, 1000, False, seed), _loader(test_loader, 1000, False, seed)
    the_method = build_method(method, dcfg, method_params)
    stage_list = [build_section(StageConfig, dict(st), f"stages[{i}]") for i, st in enumerate(stages or [])]
    if stage_list:
        check_stage_epochs(stage_list, epochs)
        check_stages(stage_list, the_method)
    if teacher is None and the_method.needs.teacher:
        raise ConfigError(f"method {method!r} needs a teacher; pass one (or a list of them)")
    _check_models(student, teacher)
    if isinstance(teacher, (list, tuple)):
        teacher = TeacherEnsemble(list(teacher))
    with (FrozenTeacher(teacher) if teacher is not None else contextlib.nullcontext()) as frozen:
        # one batch of every split through the models: bad data or models fail here, before a run folder exists
        dev, num_classes = probe(student, frozen, {"train_loader": train, "val_loader": val, "test_loader": test}, dev, num_classes)
        data = LoaderSplits(train, num_classes, val=val, test=test)  # type: ignore[arg-type]
        settings = {"method": method, "method_params": method_params, "distill": dataclasses.asdict(dcfg),
                    "train": dataclasses.asdict(train_cfg), "seed": seed, "device": str(dev or "cpu")}
        meta: Dict[str, Any] = {"model": {"class": f"{type(student).__module__}.{type(student).__qualname__}"}, "role": "student"}
        info: Dict[str, Any] = {
            "student": meta["model"]["class"],
            "teacher": f"{type(teacher).__module__}.{type(teacher).__qualname__}" if teacher is not None else "none (the method's own)",
            "student_parameters": count_parameters(student),
            "teacher_parameters": count_parameters(teacher) if teacher is not None else 0}
        config_yaml = yaml.safe_dump(_plain(settings), sort_keys=False)
        if resume:
            _check_resumable(run_path, config_yaml)
        made: List[RunDir] = []

        def run_folder() -> Optional[RunDir]:  # made once the trainer is built: a refused run leaves no folder
            if out is False:
                return None
            made.append(RunDir(run_path) if run_path is not None else new_run_dir("runs", "distill"))
            return made[0]

        (result,) = run_spec(RunSpec(
            data=data, train=train_cfg, model=student, method=the_method, seed=seed, teacher=frozen, device=dev,
            weight_plan=WeightPlan(epochs, stages=stage_list), run=run_folder, checkpoint_meta=meta,
            resume=resume, record=RunRecord(config_yaml, "distill", info, summary=True), progress=progress,
            desc=f"distill ({method})"))
    return DistillResult(student, result.history, made[0].path if made else None, the_method)


# ---------------------------------------------------------------------------------------------
# bad input: refused in one line before a run folder exists


def _check_settings(dcfg: DistillConfig, train_cfg: TrainConfig) -> None:
    """The numbers a recipe's range check covers (the same rules), named as ``distill``'s arguments."""
    checks = (  # keyword, value, the dataclass field whose rule it follows, the fix
        ("T", dcfg.temperature, (DistillConfig, "temperature"), "pass a temperature such as 4"),
        ("lr", train_cfg.optimizer.lr, (OptimizerConfig, "lr"), "pass a learning rate such as 1e-3"),
        ("grad_clip", train_cfg.grad_clip, (TrainConfig, "grad_clip"), "pass a gradient-norm limit such as 1.0, or None for no clipping"),
        ("hard_weight", dcfg.hard_weight, (DistillConfig, "hard_weight"), None),
        ("soft_weight", dcfg.soft_weight, (DistillConfig, "soft_weight"), None),
        ("weight_decay", train_cfg.optimizer.weight_decay, (OptimizerConfig, "weight_decay"), None),
    )
    for name, value, (cls, field_name), fix in checks:
        if value is not None:
            rule_of(cls, field_name).check(value, f"{name}={value!r}", fix, got=False)
    if dcfg.hard_weight == 0 and dcfg.soft_weight == 0:
        raise ConfigError("hard_weight=0 and soft_weight=0: nothing would train the student; give at least one a weight > 0")
    for name in ("epochs", "batch_size"):
        value = getattr(train_cfg, name)
        rule_of(TrainConfig, name).check(value, f"{name}={value!r}", got=False)


def _check_out(out: Any, resume: bool = False) -> Optional[Path]:
    """The run folder ``out`` names (None: a fresh default one, or none at all for ``False``).

    A folder already holding a run is refused, as the CLI refuses it: a new run would overwrite
    its checkpoints and metrics. Nothing is created here.
    """
    if resume and (out is None or out is False or (isinstance(out, str) and not out)):
        raise ConfigError("resume=True needs out= naming the run folder to continue")
    if out is None or out is False or (isinstance(out, str) and not out):
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out must be a folder path, None (runs/distill-<timestamp>) or False (no run folder), got {out!r}")
    try:
        path = check_output_location(out, "out")
    except KDLabError as exc:
        raise ConfigError(str(exc)) from None
    found = run_files(path)
    if resume:
        if not found:
            raise ConfigError(f"out={str(path)!r} holds no run to resume; drop resume=True to start one there")
        return path
    if found:
        raise ConfigError(f"out={str(path)!r} already holds a run ({', '.join(found[:4])}); pass another out= "
                          "(or out=False for no run folder), or delete that folder first")
    return path


def _check_resumable(path: Optional[Path], config_yaml: str) -> None:
    """A resumed run continues with the settings it was started with: any difference is refused in one line."""
    assert path is not None
    saved_file = path / "config.yaml"
    if not saved_file.exists():
        return  # killed before its first record: it starts over
    saved = yaml.safe_load(saved_file.read_text()) or {}
    now = yaml.safe_load(config_yaml) or {}
    before_all = flatten_settings(saved)
    for key, value in flatten_settings(now).items():
        before = before_all.get(key)
        if before != value and key != "train.epochs":  # epochs may grow: the run goes on
            raise ConfigError(f"resume=True but {key} is {value!r} here and {before!r} in {saved_file}; pass the run's "
                              "own settings to resume it, or use another out= for a new run")


def _device(device: Any) -> Optional[torch.device]:
    """``device`` checked against this machine (None: where the models are)."""
    if device is None:
        return None
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device={device!r} is not a device; pass 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but this machine has no usable CUDA device (torch.cuda.is_available() is False); "
                          "pass device='cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist; pass another index")
    try:
        torch.empty(0, device=dev)
    except Exception as exc:  # torch raises RuntimeError/AssertionError/... for a backend this build or machine lacks
        raise ConfigError(f"device={device!r} cannot be used here ({_first_line(exc)}); pass device='cpu' or 'auto'") from None
    return dev


def _check_models(student: Any, teacher: Any) -> None:
    """Modules, distinct, and a student with something to train."""
    if not isinstance(student, nn.Module):
        raise ConfigError(f"the student must be a torch nn.Module, got {type(student).__name__}")
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [] if teacher is None else [teacher]
    for i, t in enumerate(teachers):
        if not isinstance(t, nn.Module):
            raise ConfigError(f"the teacher{f' {i}' if len(teachers) > 1 else ''} must be a torch nn.Module, got {type(t).__name__}")
        if t is student:
            raise ConfigError("the student is also the teacher (the same object); pass a separate teacher, "
                              "or teacher=None with method='self-ema'")
    if not any(p.requires_grad for p in student.parameters()):
        raise ConfigError("the student has no trainable parameter (every requires_grad is False); unfreeze it with "
                          "student.requires_grad_(True) before distilling")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else type(exc).__name__)


def _devices(model: nn.Module) -> set:
    return {t.device for t in (*model.parameters(), *model.buffers())}


def _float_dtype(model: nn.Module) -> Optional[torch.dtype]:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _dataset_labels(loader: DataLoader) -> Optional[Tensor]:
    """Every label of a ``TensorDataset`` (also inside :class:`IndexedDataset`), else None."""
    ds = getattr(loader, "dataset", None)
    while isinstance(ds, IndexedDataset):
        ds = ds.dataset
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2 and isinstance(ds.tensors[1], Tensor):
        return ds.tensors[1]
    return None


def _check_labels(y: Tensor, n: int, classes: int, split: str, where: str) -> None:
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(f"{split}: labels must be integer class indices, got {y.dtype} labels; return a torch.long "
                          "class index per sample from your Dataset (not one-hot or probabilities)")
    if y.dtype not in (torch.long, torch.uint8):
        raise ConfigError(f"{split}: labels are {y.dtype}, the loss needs torch.long class indices; convert them with .long()")
    if y.dim() != 1 or (n >= 0 and len(y) != n):
        raise ConfigError(f"{split}: labels must be one class index per sample, shape (batch,), got {list(y.shape)} for "
                          f"{n} inputs; return (x, y) with y a class index")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            bad = hi if hi >= classes else lo
            raise ConfigError(f"{split}: label {bad} ({where}) is out of range for models with {classes} outputs "
                              f"(labels must be 0..{classes - 1}); fix the labels, or build the models with {max(hi + 1, classes)} outputs")


def _first_batch(loader: DataLoader, split: str) -> Tuple[Tensor, Tensor]:
    try:
        item = next(iter(loader))
    except StopIteration:
        raise ConfigError(f"{split} yields no batch (an empty Dataset, or drop_last=True with fewer samples than "
                          "batch_size); pass data with samples") from None
    x, y, _ = unpack_batch(item)
    return x, y


def _forward(model: nn.Module, x: Tensor, role: str, split: str) -> Tensor:
    """``model``'s logits on ``x`` in eval mode without gradient; any failure is one line naming model and input."""
    try:
        with eval_probe(model):
            out = model(x)
    except KDLabError:
        raise
    except Exception as exc:  # a user's model raises anything: shapes, dtypes, devices
        raise ConfigError(f"the {role} failed on inputs of shape {list(x.shape)} ({x.dtype}, {x.device}) from {split}: "
                          f"{_first_line(exc)}; make the data's inputs what the {role} expects") from None
    logits = logits_of(out, role)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ConfigError(f"the {role} returned logits of shape {list(logits.shape)} for {x.shape[0]} inputs; kdlab needs "
                          f"(batch, classes): {LOGITS_RULE}")
    return logits


def probe(student: nn.Module, teacher: Optional[FrozenTeacher], splits: Dict[str, Optional[DataLoader]],
          device: Optional[torch.device], num_classes: Optional[int]) -> Tuple[Optional[torch.device], int]:
    """Run the first batch of every split through the models; return (device, number of classes).

    Catches, in one line and before anything is written, what would otherwise fail as a raw
    exception somewhere inside the first epoch: models on different devices, inputs of the wrong
    shape or dtype, logits that cannot be read, class counts that differ, labels out of range, an
    empty split. With ``device`` None the models' own device is used (the batches are moved there).
    """
    members = [] if teacher is None else list(teacher.model.members) if isinstance(teacher.model, TeacherEnsemble) else [teacher.model]
    named = [("student", student)] + [(f"teacher {i}" if len(members) > 1 else "teacher", m) for i, m in enumerate(members)]
    if device is None:
        places = {role: _devices(m) for role, m in named}
        every = set().union(*places.values())
        if len(every) > 1:
            where = ", ".join(f"the {role} on {', '.join(sorted(map(str, d)))}" for role, d in places.items() if d)
            raise ConfigError(f"the models are on different devices ({where}); move them to one device "
                              "(model.to(...)), or pass device= to move both there")
        if every and next(iter(every)).type != "cpu":
            device = next(iter(every))
    else:
        for _, m in named:
            try:
                m.to(device)
            except Exception as exc:
                raise ConfigError(f"cannot move the models to device {str(device)!r} ({_first_line(exc)}); pass another device") from None
    classes = None
    for split, loader in splits.items():
        if loader is None:
            continue
        x, y = _first_batch(loader, split)
        if device is not None:
            x, y = x.to(device), y.to(device)
        for role, m in named if split == "train_loader" else named[:1]:  # evaluation runs the student alone
            dtype = _float_dtype(m)
            if x.is_floating_point() and dtype is not None and dtype != x.dtype:
                raise ConfigError(f"{split} gives {x.dtype} inputs but the {role}'s weights are {dtype}; make them match: "
                                  f"convert the inputs in your Dataset (x.to({dtype})) or the model (model.to({x.dtype}))")
            logits = _forward(m, x[:2], role, split)
            k = int(logits.shape[1])
            if classes is None:
                classes = k
            elif k != classes:
                raise ConfigError(f"class count mismatch: the student outputs {classes} classes, the {role} {k}; "
                                  "build every model with the same number of outputs")
        assert classes is not None
        if num_classes is not None and int(num_classes) != classes:
            raise ConfigError(f"num_classes={num_classes} but the models output {classes} classes; drop num_classes "
                              f"(it is read from the models) or build the models with {num_classes} outputs")
        _check_labels(y, len(x), classes, split, "in its first batch")
        every_label = _dataset_labels(loader)
        if every_label is not None:
            _check_labels(every_label, -1, classes, split, "in its TensorDataset")
    assert classes is not None  # the training split is never None
    return device, classes


def _plain(obj: Any) -> Any:
    """YAML-safe copy of settings (tuples → lists, other objects → their repr)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
