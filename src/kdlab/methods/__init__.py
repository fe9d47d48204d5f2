"""Distillation methods: one file per method plus its registry entry.

Importing this package registers every built-in method: ``ce``, ``hinton``, ``fitnets``, ``at``, ``dkd``, ``rkd``, ``crd``, ``multi-teacher``, ``self-ema``.
Adapters (:mod:`.adapters`) are the trainable parts feature methods own.
"""

from . import attention, crd, dkd, fitnets, kd, multi_teacher, rkd, self_ema  # noqa: F401  (registration)
from .base import Batch, Distiller, Needs, Outputs
from .kd import CE, KD
from .registry import METHODS, MethodEntry, build_method, register_method

__all__ = ["Batch", "Distiller", "Needs", "Outputs", "CE", "KD", "METHODS", "MethodEntry", "build_method", "register_method"]
