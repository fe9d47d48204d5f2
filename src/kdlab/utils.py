"""Small helpers shared across the package: atomic writes, file digests, seeding, environment capture."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, IO

import numpy as np
import torch

from . import __version__
from .device import cpu_info
from .errors import KDLabError


class WriteError(KDLabError, OSError):
    """A file could not be written (disk full, permission denied, ...), phrased for one line.

    A :class:`~kdlab.errors.KDLabError`, so the CLI prints it as one line (exit 2), and still an
    :class:`OSError`, so code that already handles I/O failures (e.g. a download fallback) keeps working.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (checkpoints and data files can be large)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``.

    A crash or Ctrl-C mid-write leaves the old file (or nothing), never a half-written one; the
    temporary ``.NAME.*.tmp`` a SIGKILL may leave is removed by :func:`remove_stale_temp_files`.
    An OSError (disk full, read-only, permission) becomes a one-line :class:`WriteError`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _test_pause(f"{path.name}.tmp")
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"cannot write {path}: {os_error_reason(exc)}; free some space or choose another location "
                         "(nothing was half-written)", exc.errno) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _test_pause(path.name)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files :func:`atomic_write` leaves when a process is killed mid-write.

    Only called on a folder this process is about to own (a run being started or resumed).
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


_PAUSE_COUNTS: Dict[str, int] = {}


def _test_pause(point: str) -> None:
    """TEST-ONLY hook so crash tests can SIGKILL/SIGINT at an exact spot; inert unless the env var is set.

    ``KDLAB_TEST_PAUSE_AFTER=NAME#N`` pauses the N-th time ``NAME`` (a file name) has just been
    written, or ``NAME.tmp`` has been written but not yet renamed into place. The process then
    creates the file named by ``KDLAB_TEST_PAUSE_SIGNAL`` and sleeps until it is killed.
    """
    spec = os.environ.get("KDLAB_TEST_PAUSE_AFTER")
    if not spec:
        return
    name, _, count = spec.partition("#")
    if name != point:
        return
    _PAUSE_COUNTS[point] = _PAUSE_COUNTS.get(point, 0) + 1
    if _PAUSE_COUNTS[point] == int(count or 1):
        signal_file = os.environ.get("KDLAB_TEST_PAUSE_SIGNAL")
        if signal_file:
            Path(signal_file).touch()
        time.sleep(600)


def check_output_location(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail early, with one line, when ``path`` cannot become a folder we can write into.

    Nothing is created: the nearest existing ancestor is probed with a temporary file that is
    removed at once (``os.access`` is not enough: it answers yes to root on a read-only mount).
    Commands call this before any training, so a typo in ``--out`` costs seconds, not an hour.
    """
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


def current_umask() -> int:
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
    info: Dict[str, Any] = {
        "kdlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    info["cpu"] = cpu_info()
    if torch.cuda.is_available():
        info["cuda"] = {"device": torch.cuda.get_device_name(), "bf16": torch.cuda.is_bf16_supported()}
    for mod in ("sklearn", "torchvision", "optuna"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info


def flatten_settings(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested settings as ``{"train.optimizer.lr": 0.001, ...}`` (to compare two runs key by key)."""
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten_settings(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}
