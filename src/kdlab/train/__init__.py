"""Training: loop, optimizers, checkpoints, run folders."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .loop import FitResult, evaluate, fit
from .optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from .rundir import RunDir

__all__ = [
    "FitResult", "evaluate", "fit", "OPTIMIZERS", "SCHEDULERS", "build_optimizer", "build_scheduler",
    "RunDir", "load_checkpoint", "load_model", "save_checkpoint",
]
