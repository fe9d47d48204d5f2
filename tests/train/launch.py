"""Launching kdlab under torchrun from the tests: two CPU workers (gloo) on a free loopback port."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import List

from kdlab.cli import main

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env() -> dict:
    """This checkout's sources first; one intra-op thread per worker (two workers share two cores)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def torchrun_command(args: List[str]) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def digits_teacher(folder: Path, hidden: int) -> str:
    """A 1-epoch digits-mlp teacher with one hidden layer of ``hidden`` units; returns its last.pt."""
    out = folder / "teacher"
    assert main(["train-teacher", "digits-mlp", "--epochs", "1", "--set", f"teacher.model.hidden=[{hidden}]", "--out", str(out), "--no-progress"]) == 0
    return str(out / "last.pt")
