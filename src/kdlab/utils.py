"""Small helpers shared across the package: atomic writes, seeding, environment capture."""

from __future__ import annotations

import errno
import json
import os
import platform
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, IO

import numpy as np
import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``.

    A crash or Ctrl-C mid-write leaves the old file (or nothing), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def check_output_location(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail early, with one line, when ``path`` cannot become a folder we can write into.

    Nothing is created: the nearest existing ancestor is probed with a temporary file that is
    removed at once (``os.access`` is not enough: it answers yes to root on a read-only mount).
    Commands call this before any training, so a typo in ``--out`` costs seconds, not an hour.
    """
    from .errors import KDLabError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise KDLabError(f"{what} {path} is a file, not a folder; pass a folder path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise KDLabError(f"{what} {path} lies under {probe}, which is a file; pass a path inside a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".kdlab-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise KDLabError(f"{what} {path} is not writable ({os_error_reason(exc)} in {probe}); choose another folder") from None
    return path


def os_error_reason(exc: OSError) -> str:
    """A short human reason for an OSError: 'disk full', 'permission denied', ..."""
    names = {errno.ENOSPC: "disk full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
             errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a path component is a file",
             errno.EPERM: "operation not permitted"}
    return names.get(exc.errno or 0, exc.strerror or type(exc).__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def seed_everything(seed: int) -> None:
    """Seed every RNG kdlab draws from (torch, numpy, random)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def environment() -> Dict[str, Any]:
    """Library versions and machine facts recorded next to every run's metrics."""
    from . import __version__

    info: Dict[str, Any] = {
        "kdlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    for mod in ("sklearn", "torchvision", "optuna"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info
