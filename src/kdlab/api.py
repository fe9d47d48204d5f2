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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import DistillConfig, StageConfig, TrainConfig, _build, _check_stages
from .data.loaders import LoaderSplits, unpack_batch
from .errors import ConfigError
from .features import eval_probe
from .methods import Distiller, build_method
from .models import count_parameters
from .teacher import FrozenTeacher, TeacherEnsemble
from .train import distributed
from .train.callbacks import epoch_progress
from .train.loop import RunCallback
from .train.rundir import RunDir
from .train.stages import StageCallback, check_stages
from .train.trainer import Trainer
from .utils import seed_everything


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
        from torch.utils.data.distributed import DistributedSampler

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
    **method_params: Any,
) -> DistillResult:
    """Distill ``teacher`` into ``student`` (trained in place) and return it with its history.

    ``method`` is a registered method (``hinton``, ``fitnets``, ``at``, …); its own parameters are
    keyword arguments (``pairs={...}``, ``weight=...``, ``hint_epochs=...``) validated against its
    dataclass. ``teacher`` may be a list of models (``multi-teacher`` weighs them; other methods
    learn from the mean of their logits) or None for a method that is its own teacher
    (``self-ema``); every teacher is handed back as it was given. ``stages``: a list of
    ``{"epochs": …, "terms": {term: weight}, "reset_optimizer": …}`` as in recipes.
    ``out`` is the run folder (default ``runs/distill-<timestamp>``; ``False``: none).
    Datasets are wrapped in a shuffling ``DataLoader`` of ``batch_size``.
    """
    seed_everything(seed)
    train = _loader(train_loader, batch_size, True, seed)
    val, test = _loader(val_loader, 1000, False, seed), _loader(test_loader, 1000, False, seed)
    dev = torch.device(device) if device is not None and str(device) != "auto" else (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else None)
    dcfg = _build(DistillConfig, {"loss": loss, "temperature": T, "hard_weight": hard_weight, "soft_weight": soft_weight}, "distill")
    train_cfg = _build(TrainConfig, {
        "epochs": epochs, "batch_size": batch_size, "grad_clip": grad_clip,
        "optimizer": {"name": optimizer, "lr": lr, "weight_decay": weight_decay}, "scheduler": {"name": scheduler},
    }, "train")
    the_method = build_method(method, dcfg, method_params)
    stage_list = [_build(StageConfig, dict(st), f"stages[{i}]") for i, st in enumerate(stages or [])]
    if stage_list:
        _check_stages(stage_list, epochs)
        check_stages(stage_list, the_method)
    if teacher is None and the_method.needs.teacher:
        raise ConfigError(f"method {method!r} needs a teacher; pass one (or a list of them)")
    if isinstance(teacher, (list, tuple)):
        teacher = TeacherEnsemble(list(teacher))
    with (FrozenTeacher(teacher) if teacher is not None else contextlib.nullcontext()) as frozen:
        if num_classes is None:
            x, _, _ = unpack_batch(next(iter(train)))  # type: ignore[arg-type]
            x = x[:2].to(dev) if dev is not None else x[:2]
            if frozen is not None:
                num_classes = int(frozen(x).shape[1])
            else:
                with eval_probe(student):
                    num_classes = int(student(x).shape[1])
        data = LoaderSplits(train, num_classes, val=val, test=test)  # type: ignore[arg-type]
        settings = {"method": method, "method_params": method_params, "distill": dataclasses.asdict(dcfg),
                    "train": dataclasses.asdict(train_cfg), "seed": seed, "device": str(dev or "cpu")}
        meta: Dict[str, Any] = {"model": {"class": f"{type(student).__module__}.{type(student).__qualname__}"}, "role": "student"}
        info: Dict[str, Any] = {
            "student": meta["model"]["class"],
            "teacher": f"{type(teacher).__module__}.{type(teacher).__qualname__}" if teacher is not None else "none (the method's own)",
            "student_parameters": count_parameters(student),
            "teacher_parameters": count_parameters(teacher) if teacher is not None else 0}
        callbacks = [c for c in (StageCallback(stage_list) if stage_list else None,
                                 distributed.rank_zero(epoch_progress(progress, f"distill ({method})", epochs))) if c is not None]
        # bad layer names, shapes or missing sample indices fail here, before a run folder exists
        trainer = Trainer(student, the_method, data, train_cfg, seed=seed, teacher=frozen, callbacks=callbacks, device=dev)
        try:
            run = None if out is False else RunDir(out) if out else _new_run_dir()
            if run is not None:  # under torchrun: written by rank 0 alone
                import yaml

                if distributed.is_main():
                    run.write_config(yaml.safe_dump(_plain(settings), sort_keys=False))
                    run.write_run_info(seed, "distill", info)
                trainer.callbacks.callbacks.insert(0, distributed.RankZero(RunCallback(run, meta)))
        except BaseException:
            trainer.close()  # no hook of ours stays on the user's models
            raise
        t0 = time.perf_counter()
        (result,) = trainer.fit()
    if run is not None and distributed.is_main():
        info.update(seconds=time.perf_counter() - t0, best_epoch=result.best_epoch, best_metric=result.best_metric)
        run.write_run_info(seed, "distill", info)
    return DistillResult(student, result.history, run.path if run is not None else None, the_method)


def _new_run_dir() -> RunDir:
    """``runs/distill-<timestamp>``; under torchrun rank 0 names it for every process."""
    ctx = distributed.context()
    if ctx is None:
        return RunDir.new("runs", "distill")
    return RunDir(ctx.broadcast_object(RunDir.fresh_path("runs", "distill") if ctx.is_main() else None))


def _plain(obj: Any) -> Any:
    """YAML-safe copy of settings (tuples → lists, other objects → their repr)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
