"""The run folder: resolved config, environment, seed and per-epoch metrics side by side.

Also the rules for reusing a folder: an existing run is never silently mixed into (a new run
needs a new or empty folder, ``--overwrite`` moves the old one aside), and ``--resume`` continues
a run with its *own* recorded recipe (:func:`kdlab.resume.resume_recipe`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import CheckpointError, KDLabError
from ..utils import atomic_write_json, atomic_write_text, check_output_location, environment, os_error_reason, remove_stale_temp_files
from . import distributed
from .checkpoint import load_checkpoint

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl")


class RunDir:
    """``config.yaml``, ``run.json`` (versions, seed, command) and ``metrics.jsonl`` in one folder.

    Every file is rewritten atomically, so an interrupted run leaves complete files behind.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics: List[Dict[str, Any]] = read_metrics(self.path)

    @staticmethod
    def fresh_path(parent: str | Path, name: str) -> Path:
        """``parent/name-YYYYmmdd-HHMMSS`` (suffixed if taken), not yet created."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(parent) / f"{name}-{stamp}"
        path, i = base, 1
        while path.exists():
            i += 1
            path = Path(f"{base}-{i}")
        return path

    @staticmethod
    def new(parent: str | Path, name: str) -> "RunDir":
        return RunDir(RunDir.fresh_path(parent, name))

    def write_config(self, config_yaml: str) -> None:
        atomic_write_text(self.path / "config.yaml", config_yaml)

    def write_run_info(self, seed: int, role: str, extra: Optional[Dict[str, Any]] = None, resumed: bool = False) -> None:
        """Write ``run.json``; when ``resumed``, keep what the start recorded and append this resume."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        old = read_run_info(self.path) if resumed else {}
        if old:
            info = dict(old)
            info["resumed"] = list(old.get("resumed", [])) + [{"at": now, "environment": environment()}]
        else:
            info = {"seed": seed, "role": role, "environment": environment(), "started": now}
            info.update(extra or {})
        atomic_write_json(self.path / "run.json", info)

    def update_run_info(self, facts: Dict[str, Any]) -> None:
        """Add ``facts`` to ``run.json`` (a finished run's summary), keeping what the start recorded."""
        atomic_write_json(self.path / "run.json", {**read_run_info(self.path), **facts})

    def log_epoch(self, record: Dict[str, Any]) -> None:
        self.metrics = [m for m in self.metrics if m.get("epoch") != record.get("epoch")] + [record]
        self._write_metrics()

    def truncate_metrics(self, last_epoch: int) -> None:
        """Forget epochs after ``last_epoch`` (used when resuming from an earlier checkpoint)."""
        self.metrics = [m for m in self.metrics if m.get("epoch", 0) <= last_epoch]

    def sync_metrics(self, epoch: int, record: Optional[Dict[str, Any]]) -> None:
        """Make ``metrics.jsonl`` agree with a checkpoint of ``epoch`` whose own record is ``record``.

        A kill can fall between writing ``last.pt`` and rewriting the metrics (the file is then one
        epoch behind) or, with an older checkpoint restored, leave later epochs in it: drop epochs
        after ``epoch``, append the checkpoint's record when its epoch is missing. Written only when
        something changed.
        """
        kept = [m for m in self.metrics if m.get("epoch", 0) <= epoch]
        if record is not None and not any(m.get("epoch") == epoch for m in kept):
            kept.append(dict(record))
        if kept != self.metrics or (not kept and self.file("metrics.jsonl").exists()):
            self.metrics = kept
            self._write_metrics()

    def remove_stale_temp_files(self) -> List[Path]:
        return remove_stale_temp_files(self.path)

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(m, sort_keys=True) + "\n" for m in self.metrics)
        atomic_write_text(self.path / "metrics.jsonl", text)

    def file(self, name: str) -> Path:
        return self.path / name


def new_run_dir(parent: str | os.PathLike, name: str) -> RunDir:
    """A fresh ``parent/name-<timestamp>`` run folder; under torchrun rank 0 names it for every process."""
    ctx = distributed.context()
    if ctx is None:
        return RunDir.new(parent, name)
    return RunDir(ctx.broadcast_object(RunDir.fresh_path(parent, name) if ctx.is_main() else None))


def read_metrics(folder: Path) -> List[Dict[str, Any]]:
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path} line {i} is not valid JSON; restore the file or start a new run with --overwrite") from None
    return records


def read_run_info(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / "run.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not valid JSON; restore the file or start a new run with --overwrite") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} is not a kdlab run.json; restore the file or start a new run with --overwrite")
    return info


# ---------------------------------------------------------------------------------------------
# folder reuse


def run_files(path: str | os.PathLike) -> List[str]:
    """The run files (config.yaml, run.json, metrics.jsonl, *.pt) present in ``path``."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = [name for name in RUN_FILES if (path / name).exists()]
    return found + sorted(p.name for p in path.glob("*.pt"))


RESUME_OR_OVERWRITE = "pass --resume to continue it, --overwrite to move it aside and start afresh, or choose another --out"


def check_new_run_folder(path: str | os.PathLike, fix: str = RESUME_OR_OVERWRITE) -> Path:
    """``path`` may receive a new run: nothing there yet, or an empty folder, or one without run files.

    Refuses a folder that already holds a run, so a new run never mixes into (or clobbers) an old one;
    ``fix`` is what the error tells the user to do instead.
    """
    path = check_output_location(path, "run folder")
    found = run_files(path)
    if found:
        raise KDLabError(f"--out {path} already holds a run ({', '.join(found[:4])}); {fix}")
    return path


def move_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` to ``<path>.replaced-YYYYmmdd-HHMMSS`` (suffixed if taken); return the new path.

    ``--overwrite`` never deletes a run: it moves it out of the way, so a mistyped folder costs nothing.
    """
    path = Path(path)
    base = Path(f"{path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    target, i = base, 1
    while target.exists():
        i += 1
        target = Path(f"{base}-{i}")
    try:
        os.rename(path, target)
    except OSError as exc:
        raise KDLabError(f"cannot move {path} aside to {target} ({os_error_reason(exc)}); move or delete it yourself, or choose another --out") from None
    return target


def epochs_done(path: str | os.PathLike) -> int:
    """Epochs completed by the run in ``path`` according to its ``last.pt`` (0 when there is none)."""
    last = Path(path) / "last.pt"
    if not last.exists():
        return 0
    state = load_checkpoint(last)
    try:
        return int(state["epoch"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{last} records no epoch; it cannot resume this run (start a new run with --overwrite)") from None
