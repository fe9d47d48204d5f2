"""The run folder: resolved config, environment, seed and per-epoch metrics side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..utils import atomic_write_json, atomic_write_text, environment


class RunDir:
    """``config.yaml``, ``run.json`` (versions, seed, command) and ``metrics.jsonl`` in one folder.

    Every file is rewritten atomically, so an interrupted run leaves complete files behind.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics: List[Dict[str, Any]] = []
        existing = self.path / "metrics.jsonl"
        if existing.exists():
            self.metrics = [json.loads(line) for line in existing.read_text().splitlines() if line.strip()]

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

    def write_run_info(self, seed: int, role: str, extra: Optional[Dict[str, Any]] = None) -> None:
        info = {"seed": seed, "role": role, "environment": environment(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        info.update(extra or {})
        atomic_write_json(self.path / "run.json", info)

    def log_epoch(self, record: Dict[str, Any]) -> None:
        self.metrics = [m for m in self.metrics if m.get("epoch") != record.get("epoch")] + [record]
        text = "".join(json.dumps(m, sort_keys=True) + "\n" for m in self.metrics)
        atomic_write_text(self.path / "metrics.jsonl", text)

    def truncate_metrics(self, last_epoch: int) -> None:
        """Forget epochs after ``last_epoch`` (used when resuming from an earlier checkpoint)."""
        self.metrics = [m for m in self.metrics if m.get("epoch", 0) <= last_epoch]

    def file(self, name: str) -> Path:
        return self.path / name
