"""Distillation methods: one file per method plus its registry entry.

Importing this package registers every built-in method (``ce``, ``hinton``, …).
"""

from . import kd  # noqa: F401  (registration)
from .base import Batch, Distiller, Needs, Outputs
from .kd import CE, KD
from .registry import METHODS, MethodEntry, register_method

__all__ = ["Batch", "Distiller", "Needs", "Outputs", "CE", "KD", "METHODS", "MethodEntry", "register_method"]
