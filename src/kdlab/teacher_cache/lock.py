"""One process at a time trains a cache entry: an ``fcntl.flock`` lock file beside it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no locking; concurrent runs may train the same teacher twice)
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def entry_lock(path: Path, log: Callable[[str], None]) -> Iterator[bool]:
    """Hold the entry's lock for the ``with`` block; yields True if another process held it first.

    The kernel drops the lock when its holder dies (even by SIGKILL), so a crashed run never
    leaves a stale lock.
    """
    if fcntl is None:  # pragma: no cover
        yield False
        return
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    waited = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            log(f"teacher: waiting for process {holder}, which is training this teacher into {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield waited
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking a lock file races with waiters)
