"""Checkpoints that are written atomically and fail with a clear message when unreadable.

Every checkpoint and cache file is read with ``torch.load(weights_only=True)``: a ``.pt`` file is
a pickle, and unpickling an arbitrary file can run any code it names. kdlab only ever saves
tensors, numbers, strings, lists and dicts (including optimizer, scheduler and RNG states), so
anything else in a file is refused before it can execute.
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import build_model
from ..utils import atomic_write

FORMAT = "kdlab-checkpoint-v1"
ROLES = ("teacher", "student")


def save_checkpoint(path: str | os.PathLike, payload: Dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    atomic_write(path, lambda fh: fh.write(buf.getbuffer()))


def _python_objects(path: Path, exc: BaseException) -> Optional[List[str]]:
    """The non-allowlisted globals a file would import when unpickled, without unpickling it.

    None when the file is simply damaged (not a pickle that names Python objects). The file is
    only scanned (torch's opcode scan, the error message, or :mod:`pickletools`); nothing runs.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if names:
            return sorted(set(names))
    except Exception:  # not a zip checkpoint (legacy torch.save, plain pickle, junk)
        pass
    names = re.findall(r"GLOBAL (\S+)", str(exc))
    if names:
        return sorted(set(names))
    try:  # a plain pickle: list what it would import
        strings: List[str] = []
        found: List[str] = []
        for op, arg, _ in pickletools.genops(path.read_bytes()):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            elif isinstance(arg, str):
                strings.append(arg)
        return sorted(set(found)) or None
    except Exception:
        return None


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a kdlab checkpoint with ``weights_only=True``; any other content is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the path or train the model first")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle
        objects = _python_objects(path, exc)
        if objects:
            shown = ", ".join(objects[:3]) + (", ..." if len(objects) > 3 else "")
            raise CheckpointError(
                f"checkpoint {path} contains Python objects that could run code when loaded ({shown}); kdlab only "
                "loads tensors, numbers, strings, lists and dicts: re-save it with kdlab, or load it yourself if you trust it"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a kdlab checkpoint ({type(exc).__name__}); retrain or pick another file"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a kdlab checkpoint ({FORMAT}); save it with kdlab")
    return payload


def model_payload(
    model: nn.Module,
    name: str,
    params: Dict[str, Any],
    in_shape: Sequence[int],
    num_classes: int,
    role: Optional[str] = None,
    input_spec: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """What is needed to rebuild the model without its recipe, and to feed it.

    ``role`` ("teacher" or "student") lets a loader warn when a student is used as a teacher;
    ``input_spec`` (see :func:`kdlab.data.input_spec`) records the input shape and normalisation,
    so ``torch.load(path, weights_only=True)`` alone is enough to prepare inputs correctly.
    """
    payload: Dict[str, Any] = {
        "model": {"name": name, "params": dict(params), "in_shape": list(in_shape), "num_classes": int(num_classes)},
        "state_dict": model.state_dict(),
    }
    if role is not None:
        payload["role"] = role
    if input_spec is not None:
        payload["input"] = dict(input_spec)
    return payload


def load_model(path: str | os.PathLike) -> tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a model from a checkpoint; returns (model, checkpoint payload)."""
    payload = load_checkpoint(path)
    return model_from_payload(payload, path), payload


def model_from_payload(payload: Dict[str, Any], path: str | os.PathLike) -> nn.Module:
    """The model a loaded checkpoint payload describes, with its weights (``path`` is for messages)."""
    spec = payload.get("model")
    if not isinstance(spec, dict) or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} holds no model; was it written by an older kdlab?")
    try:
        model = build_model(spec["name"], spec["in_shape"], spec["num_classes"], spec["params"], where="checkpoint.model")
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} has an incomplete model description ({exc}); retrain or pick another file") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit model {spec['name']!r}: {str(exc).splitlines()[0]}") from None
    return model
