"""Optimizer and LR-scheduler registries."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR

from ..config import OptimizerConfig, SchedulerConfig, check_scheduler
from ..registry import Registry
from .lean_adam import LeanAdam, LeanAdamW

OPTIMIZERS: Registry[Callable[[Iterable[nn.Parameter], OptimizerConfig], Optimizer]] = Registry("optimizer")
SCHEDULERS: Registry[Callable[[Optimizer, SchedulerConfig, int], Optional[LRScheduler]]] = Registry("scheduler")


def _fast(cls: type, params: list, **kwargs) -> Optimizer:
    """Fused kernels when this torch build has them for CPU (2.4+), else the foreach path.

    The fused CPU Adam step is cheaper than the foreach one; for a tiny student the optimizer
    step dominates the training step, so this matters.
    """
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, foreach=True, **kwargs)


@OPTIMIZERS.register("adam")
def adam(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> Optimizer:
    return _fast(LeanAdam, list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> Optimizer:
    return _fast(LeanAdamW, list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> Optimizer:
    return _fast(torch.optim.SGD, list(params), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@SCHEDULERS.register("constant")
def constant(opt: Optimizer, cfg: SchedulerConfig, epochs: int) -> Optional[LRScheduler]:
    return None


@SCHEDULERS.register("cosine")
def cosine(opt: Optimizer, cfg: SchedulerConfig, epochs: int) -> Optional[LRScheduler]:
    """Cosine decay from the base LR to 0 over the run, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


@SCHEDULERS.register("step")
def step(opt: Optimizer, cfg: SchedulerConfig, epochs: int) -> Optional[LRScheduler]:
    """Multiply the LR by ``gamma`` every ``step_size`` epochs."""
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


@SCHEDULERS.register("multistep")
def multistep(opt: Optimizer, cfg: SchedulerConfig, epochs: int) -> Optional[LRScheduler]:
    """Multiply the LR by ``gamma`` at each epoch in ``milestones`` (counted after any warm-up)."""
    check_scheduler(cfg, "train.scheduler")  # also for configs built in Python, not read from a recipe
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> Optimizer:
    return OPTIMIZERS.get(cfg.name)((p for p in model.parameters() if p.requires_grad), cfg)


def build_scheduler(opt: Optimizer, cfg: SchedulerConfig, epochs: int, warmup_epochs: int = 0) -> Optional[LRScheduler]:
    """The recipe's scheduler, stepped once per epoch, after ``warmup_epochs`` of linear warm-up.

    Warm-up epoch ``e`` (1-based) trains at ``lr·e/(w+1)``; then the scheduler runs over the
    remaining ``epochs − w`` epochs (cosine still ends at 0 on the last epoch). Both live in one
    :class:`~torch.optim.lr_scheduler.SequentialLR`, so the warm-up position is part of the
    scheduler state a checkpoint saves.
    """
    if warmup_epochs <= 0:
        return SCHEDULERS.get(cfg.name)(opt, cfg, epochs)
    warm = LinearLR(opt, start_factor=1.0 / (warmup_epochs + 1), end_factor=1.0, total_iters=warmup_epochs)
    main = SCHEDULERS.get(cfg.name)(opt, cfg, max(epochs - warmup_epochs, 1))
    if main is None:
        return warm
    return SequentialLR(opt, [warm, main], milestones=[warmup_epochs])
