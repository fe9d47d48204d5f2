"""Distillation losses. Importing this package registers every built-in coding."""

from . import kd, pitfalls  # noqa: F401  (registers "hinton" and the pitfall codings)
from .kd import kd_loss
from .registry import SOFT_LOSSES

__all__ = ["kd_loss", "SOFT_LOSSES"]
