"""Find the trained student (and its teacher) in a run folder, through kdlab's safe checkpoint loader.

A checkpoint's ``state_dict`` is the model alone: adapters, projection heads and optimizer state
live under other keys (the method's own state), so rebuilding the model from the checkpoint's
``model`` description drops every training-only part by construction.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from ..errors import CheckpointError, KDLabError
from ..train.checkpoint import load_checkpoint, model_from_payload
from ..train.rundir import read_run_info

CHECKPOINTS = ("best", "last")


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with what the checkpoint says about it."""

    model: nn.Module
    payload: Dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return str(self.payload["model"]["name"])

    @property
    def input_spec(self) -> Dict[str, Any]:
        spec = self.payload.get("input")
        if isinstance(spec, dict) and "shape" in spec:
            return dict(spec)
        return {"shape": list(self.payload["model"]["in_shape"])}

    @property
    def test_acc(self) -> Optional[float]:
        """Test accuracy recorded with these weights (None when the checkpoint has none)."""
        metrics = self.payload.get("metrics")
        acc = metrics.get("test_acc") if isinstance(metrics, dict) else None
        return float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else None

    @property
    def epoch(self) -> Optional[int]:
        epoch = self.payload.get("epoch", (self.payload.get("metrics") or {}).get("epoch"))
        return int(epoch) if isinstance(epoch, int) else None


def checkpoint_path(source: str | os.PathLike, checkpoint: str = "best") -> Path:
    """``source`` itself when it is a checkpoint file, else ``best.pt``/``last.pt`` in the run folder."""
    path = Path(source).expanduser()
    if checkpoint not in CHECKPOINTS:
        raise KDLabError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if path.is_file():
        return path
    if not path.exists():
        raise KDLabError(f"run folder {path} not found; pass the folder of a train-student/distill run (or a .pt file)")
    for name in (f"{checkpoint}.pt", "last.pt", "best.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"run folder {path} holds no best.pt or last.pt; train the run first (or pass a .pt file)")


def load_student(source: str | os.PathLike, checkpoint: str = "best") -> LoadedModel:
    """The model of a run folder's ``best.pt`` (or ``last.pt``), or of a checkpoint file, on the CPU, in eval mode."""
    path = checkpoint_path(source, checkpoint)
    payload = load_checkpoint(path)  # weights_only=True; anything else is refused in one line
    spec = payload.get("model") if isinstance(payload, dict) else None
    if isinstance(spec, dict) and "name" not in spec and isinstance(spec.get("class"), str):
        raise KDLabError(f"checkpoint {path} holds the weights of your own model class {spec['class']} (a kdlab.distill run), "
                         "which kdlab cannot rebuild; load its state_dict into your model and use torch.onnx.export / "
                         "kdlab.ship.profile_models on it")
    model = model_from_payload(payload, path)
    return LoadedModel(model.eval(), payload, path)


def recorded_teachers(run_folder: Path) -> List[Path]:
    """The teacher checkpoint(s) a distill run's ``run.json`` records (empty for other runs)."""
    info = read_run_info(run_folder)
    if isinstance(info.get("teacher_checkpoint"), str):
        return [Path(info["teacher_checkpoint"])]
    many = info.get("teacher_checkpoints")
    if isinstance(many, list) and all(isinstance(p, str) for p in many):
        return [Path(p) for p in many]
    return []


def recorded_teacher_acc(run_folder: Path) -> Optional[float]:
    """The teacher test accuracy a distill run measured (``run.json``'s ``teacher_test_acc``)."""
    acc = read_run_info(run_folder).get("teacher_test_acc")
    return float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else None
