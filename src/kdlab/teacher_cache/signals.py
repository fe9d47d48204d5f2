"""The teacher signal store: the teacher's outputs for every (training sample, view), computed once.

A store holds one array per signal (``logits``, and each tapped feature in the form its method
asked for), shaped ``(samples, views, *signal shape)``. It is filled shard by shard (a block of
samples, all their views), each shard written, flushed and then marked done, so an interrupted
computation resumes at the first shard not marked done and a half-written shard is never read.
When every shard is done, ``meta.json`` (the key, the shapes and dtypes, the sha256 of every
array file) is written and the folder is renamed into place: a store is either complete or
absent. Reuse checks the key, the shapes and the sha256s; anything else is computed afresh.

Format: NumPy's ``.npy`` (a standard, documented header plus raw array bytes). It is
memory-mapped by ``numpy.load(mmap_mode="r")``, so a store larger than RAM is read row by row;
it is read with ``allow_pickle=False``, so a file cannot run code; and every array library reads
it. bfloat16, which ``.npy`` has no type for, is stored as its raw 16-bit pattern (``uint16``) and
viewed back as ``torch.bfloat16`` (recorded as such in ``meta.json``).

Two runs asking for one store at once: the first computes it under the entry's lock, the second
waits and reuses it. Under torchrun every process computes the shards ``rank, rank + world, …``
into the shared files, then all meet at a barrier and rank 0 finalises.

This module knows nothing of teachers or methods: it is handed the function that computes the
signals of a batch of (sample, view) pairs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, KDLabError
from ..utils import atomic_write_json, os_error_reason
from .keys import key_digest, normal
from .lock import entry_lock

STORE_FORMAT = 1
META_FILE = "meta.json"

#: dtype name in meta.json → (numpy dtype on disk, torch dtype the store hands out)
_DTYPES: Dict[str, Tuple[Any, torch.dtype]] = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.uint16, torch.bfloat16),  # raw bit pattern; .npy has no bfloat16
    "int32": (np.int32, torch.int32),  # class indices of top-k logits
}

#: (sample indices, view per sample) → {signal name: tensor (B, *shape)}
ComputeSignals = Callable[[Tensor, Tensor], Dict[str, Tensor]]


@dataclass(frozen=True)
class SignalShape:
    shape: Tuple[int, ...]
    dtype: str  # a key of _DTYPES

    @property
    def bytes_per_row(self) -> int:
        return int(np.dtype(_DTYPES[self.dtype][0]).itemsize * math.prod(self.shape))


def store_bytes(samples: int, views: int, shapes: Mapping[str, SignalShape]) -> int:
    """The store's size on disk (array bytes; the headers add a few hundred bytes per signal)."""
    return samples * views * sum(s.bytes_per_row for s in shapes.values())


def check_budget(samples: int, views: int, shapes: Mapping[str, SignalShape], folder: Path, max_gb: float) -> None:
    """One-line refusal when the store would exceed ``max_gb`` or the disk's free space, naming what fits."""
    size = store_bytes(samples, views, shapes)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    limit = min(max_gb * 1e9, free)
    if size <= limit:
        return
    per_view = max(store_bytes(samples, 1, shapes), 1)
    fits = int(limit // per_view)
    big = max(shapes, key=lambda k: shapes[k].bytes_per_row)
    which = f"teacher_signals.max_gb={max_gb:g}" if max_gb * 1e9 <= free else f"{free / 1e9:.1f} GB free in {folder}"
    hint = (f"use teacher_signals.views={fits}" if fits >= 1 else
            f"pick a smaller layer than {big!r} ({shapes[big].shape}) or train with --teacher-online")
    raise ConfigError(f"the teacher signal store would take {size / 1e9:.2f} GB ({views} views of {samples} samples; "
                      f"{big!r} is the largest signal), over {which}; {hint}, or raise teacher_signals.max_gb")


def _to_disk(t: Tensor, dtype: str) -> np.ndarray:
    t = t.detach().to("cpu", _DTYPES[dtype][1]).contiguous()
    return t.view(torch.uint16).numpy() if dtype == "bfloat16" else t.numpy()


def _from_disk(a: np.ndarray, dtype: str) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class SignalStore:
    """A complete store, memory-mapped: :meth:`rows` reads the signals of (sample, view) pairs."""

    def __init__(self, path: Path, meta: Dict[str, Any], files: Optional[Mapping[str, str]] = None) -> None:
        """``files``: signal name -> the array it reads, when they differ (a reader of a store kept for
        several runs: a layer in a second form is stored under an alias)."""
        self.path, self.meta = path, meta
        self.samples, self.views = int(meta["samples"]), int(meta["views"])
        self.shapes = {k: SignalShape(tuple(v["shape"]), v["dtype"]) for k, v in meta["signals"].items()}
        files = files or {}
        self.arrays = {k: np.load(path / f"{files.get(k, k)}.npy", mmap_mode="r", allow_pickle=False) for k in self.shapes}
        self.computed = False  # True when this process computed (part of) it rather than reusing it
        self.seconds = 0.0  # time spent computing it in this process

    @property
    def nbytes(self) -> int:
        return store_bytes(self.samples, self.views, self.shapes)

    def rows(self, index: Tensor, view: Tensor) -> Dict[str, Tensor]:
        """{signal: (B, *shape)} of views ``view[b]`` of samples ``index[b]`` (copies only those rows)."""
        i, v = index.detach().cpu().numpy(), view.detach().cpu().numpy()
        return {k: _from_disk(a[i, v], self.shapes[k].dtype).to(index.device) for k, a in self.arrays.items()}

    def facts(self) -> Dict[str, Any]:
        return {"path": str(self.path), "views": self.views, "samples": self.samples, "bytes": self.nbytes,
                "signals": {k: {"shape": list(s.shape), "dtype": s.dtype} for k, s in self.shapes.items()},
                "computed_here": self.computed, "compute_seconds": round(self.seconds, 3)}


def _verified(path: Path, key: Dict[str, Any], samples: int, views: int) -> Optional[SignalStore]:
    """The store at ``path`` if it is complete, holds ``key`` for ``samples`` × ``views`` rows and its files
    match their sha256; else None."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or normal(meta.get("key")) != normal(key)
            or meta.get("samples") != samples or meta.get("views") != views):
        return None
    try:
        for name, info in meta["signals"].items():
            file = path / f"{name}.npy"
            if _sha256(file) != info["sha256"]:
                return None
        store = SignalStore(path, meta)
        for name, a in store.arrays.items():
            if a.shape != (store.samples, store.views, *store.shapes[name].shape):
                return None
        return store
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _world() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _world()[1] > 1:
        torch.distributed.barrier()


def _fill(work: Path, samples: int, views: int, shapes: Mapping[str, SignalShape],
          compute: ComputeSignals, shard: int, batch_size: int, device: torch.device, log: Callable[[str], None]) -> None:
    """Compute the shards of this process not yet marked done into ``work`` (created by rank 0)."""
    rank, world = _world()
    done = work / "done"
    arrays = {k: np.load(work / f"{k}.npy", mmap_mode="r+", allow_pickle=False) for k in shapes}
    n_shards = -(-samples // shard)
    mine = [s for s in range(rank, n_shards, world) if not (done / f"{s:06d}").exists()]
    if mine and rank == 0 and len(mine) < -(-n_shards // world):
        log(f"teacher signals: resuming, {len(mine)} shards of {n_shards} left")
    for count, s in enumerate(mine, 1):
        lo, hi = s * shard, min((s + 1) * shard, samples)
        for v in range(views):
            for start in range(lo, hi, batch_size):
                index = torch.arange(start, min(start + batch_size, hi), device=device)
                out = compute(index, torch.full_like(index, v))
                for k, a in arrays.items():
                    got = out[k]
                    if tuple(got.shape[1:]) != shapes[k].shape:
                        raise KDLabError(f"teacher signal {k!r} has shape {tuple(got.shape[1:])}, expected {shapes[k].shape}")
                    a[start:start + len(index), v] = _to_disk(got, shapes[k].dtype)
        for a in arrays.values():
            a.flush()
        (done / f"{s:06d}").touch()  # only after its rows are on disk: a half-written shard is never marked
        if count == len(mine) or count % max(1, len(mine) // 10) == 0:
            log(f"teacher signals: {count}/{len(mine)} shards of this process computed")
    del arrays


def signal_store(root: Path, key: Dict[str, Any], *, samples: int, views: int,
                 shapes: Mapping[str, SignalShape | Tuple[Tuple[int, ...], str]], compute: ComputeSignals,
                 device: torch.device, batch_size: int = 256, shard: int = 2048, max_gb: float = 20.0,
                 log: Optional[Callable[[str], None]] = None) -> SignalStore:
    """The store of ``key`` under ``root``: reused when a verified one exists, else computed now.

    ``compute(index, view)`` returns the signals of those (sample, view) pairs; ``shapes`` says
    what it returns per row and how it is stored. Raises :class:`ConfigError` (one line) when the
    store would not fit ``max_gb`` or the disk.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    shapes = {k: s if isinstance(s, SignalShape) else SignalShape(tuple(s[0]), s[1]) for k, s in shapes.items()}
    name = f"signals-{key_digest(key)[:16]}"
    path, work = root / name, root / f"{name}.partial"
    rank, world = _world()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = entry_lock(path, say) if world == 1 else _no_lock()
        with lock:
            found = _verified(path, key, samples, views)
            if found is not None:
                return found
            check_budget(samples, views, shapes, root, max_gb)
            t0 = time.perf_counter()
            if rank == 0:
                if path.exists():
                    shutil.rmtree(path)  # present but not verified: never trusted
                fresh = not (work / "key.json").exists() or normal(json.loads((work / "key.json").read_text())) != normal(key)
                if fresh:
                    shutil.rmtree(work, ignore_errors=True)
                    (work / "done").mkdir(parents=True)
                    for k, s in shapes.items():
                        np.lib.format.open_memmap(work / f"{k}.npy", mode="w+", dtype=_DTYPES[s.dtype][0],
                                                  shape=(samples, views, *s.shape))
                    atomic_write_json(work / "key.json", key)
                    say(f"teacher signals: computing {views} view(s) of {samples} samples once "
                        f"({store_bytes(samples, views, shapes) / 1e6:.1f} MB) into {path}")
            _barrier()
            _fill(work, samples, views, shapes, compute, shard, batch_size, device, say)
            _barrier()
            if rank == 0:
                meta = {"format": STORE_FORMAT, "key": key, "samples": samples, "views": views,
                        "signals": {k: {"shape": list(s.shape), "dtype": s.dtype, "sha256": _sha256(work / f"{k}.npy")}
                                    for k, s in shapes.items()}}
                atomic_write_json(work / META_FILE, meta)
                shutil.rmtree(work / "done")
                (work / "key.json").unlink()
                os.replace(work, path)
            _barrier()
            store = _verified(path, key, samples, views)
            if store is None:
                raise KDLabError(f"the teacher signal store {path} failed its check right after it was written; "
                                 "check the disk, delete the folder and run again")
            store.computed, store.seconds = True, time.perf_counter() - t0
            return store
    except OSError as exc:
        raise KDLabError(f"teacher signal store under {root} is unusable ({os_error_reason(exc)}: {exc.filename or path}); "
                         "free space or point --teacher-cache / $KDLAB_TEACHER_CACHE at a writable folder") from None


class _no_lock:
    """Under torchrun the processes compute the store together (a barrier, not a lock, orders them)."""

    def __enter__(self) -> bool:
        return False

    def __exit__(self, *exc: Any) -> None:
        return None
