"""Checkpoints that are written atomically and fail with a clear message when unreadable."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import build_model
from ..utils import atomic_write

FORMAT = "kdlab-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, payload: Dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    atomic_write(path, lambda fh: fh.write(buf.getbuffer()))


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the path or train the model first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a kdlab checkpoint ({type(exc).__name__}); retrain or pick another file"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a kdlab checkpoint ({FORMAT}); save it with kdlab")
    return payload


def model_payload(model: nn.Module, name: str, params: Dict[str, Any], in_shape: Sequence[int], num_classes: int) -> Dict[str, Any]:
    """What is needed to rebuild the model without its recipe."""
    return {
        "model": {"name": name, "params": dict(params), "in_shape": list(in_shape), "num_classes": int(num_classes)},
        "state_dict": model.state_dict(),
    }


def load_model(path: str | os.PathLike) -> tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a model from a checkpoint; returns (model, checkpoint payload)."""
    payload = load_checkpoint(path)
    spec = payload.get("model")
    if not isinstance(spec, dict) or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} holds no model; was it written by an older kdlab?")
    model = build_model(spec["name"], spec["in_shape"], spec["num_classes"], spec["params"], where="checkpoint.model")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit model {spec['name']!r}: {str(exc).splitlines()[0]}") from None
    return model, payload
