"""Where tensors live: one setting for the trainer, the objectives and the batched path.

Nothing in kdlab creates a tensor on a hard-coded device; everything follows the data and the
model, which the pipeline places on :func:`resolve_device` of the recipe's ``device``.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(spec: str, where: str = "device") -> torch.device:
    """``cpu``, ``cuda``/``cuda:N`` (must exist) or ``auto`` (cuda when available, else cpu)."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where}: unknown device {spec!r}; choose {CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where}: unsupported device {spec!r}; choose {CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: {spec!r} but no CUDA device is available here "
                              "(torch.cuda.is_available() is False); use device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device
