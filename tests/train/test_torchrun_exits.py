"""Every way a torchrun launch of kdlab can end: each worker with its own exit code and one line.

A refusal that every rank reaches (a batch the processes cannot share, a method that cannot run
data-parallel, a missing file) must end *each* worker with exit 2 and its one-line message: not
with -15 because torchrun stopped the slower worker when the faster one exited, and never with a
C++ ``terminate`` (SIGABRT) from the interpreter's teardown after the process group. These used
to fail intermittently, so each path is launched several times. Ctrl-C (SIGINT to the whole
foreground process group, then torchrun's forwarded SIGINT) ends each worker with 130 and the
one "interrupted" line.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.cli import main

REPO = Path(__file__).resolve().parents[2]
RECORD = Path(__file__).with_name("exit_recorder.py")
BASE = ["distill", "digits-mlp", "--no-progress", "--epochs", "1"]
#: generous: a launch takes a few seconds quiet, far longer on a loaded machine
LAUNCH_TIMEOUT = 600


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("exits") / "teacher"
    assert main(["train-teacher", "digits-mlp", "--epochs", "1", "--set", "teacher.model.hidden=[64]", "--out", str(out), "--no-progress"]) == 0
    return str(out / "last.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def _launch(args: list, cwd: Path) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *args]


def _worker_exit_codes(torchrun_output: str) -> list:
    """Per-rank exit codes from torchrun's failure summary (``exitcode  : 2 (pid: …)``)."""
    return sorted(int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+) \(pid", torchrun_output))


REFUSALS = {
    "batch-not-divisible": (["--batch-size", "127"], "is the global batch and must be divisible by the 2 processes"),
    "crd-per-sample-state": (["--method", "crd"], "method crd keeps per-sample state"),
    "missing-teacher-file": (["--teacher", "no-such-teacher.pt"], "no-such-teacher.pt"),
}


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refusal_ends_every_worker_with_exit_2_and_one_line(case, attempt, teacher, tmp_path):
    extra, needle = REFUSALS[case]
    argv = [*BASE, "--teacher", teacher, "--out", str(tmp_path / "run"), *extra]
    proc = subprocess.run(_launch(["-m", "kdlab", *argv], tmp_path), cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=LAUNCH_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert "terminate called" not in output and "SIGABRT" not in output, output[-4000:]
    assert _worker_exit_codes(output) == [2, 2], output[-4000:]  # not -15 (stopped by torchrun) nor -6 (abort)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("kdlab: error")]
    assert len(ours) == 2 and all(needle in line for line in ours), output[-4000:]  # one line per worker
    assert "kdlab/" not in proc.stderr, output[-4000:]  # no traceback through kdlab's code
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("attempt", range(2))
def test_ctrl_c_ends_every_worker_with_130_and_one_line(attempt, teacher, tmp_path):
    """SIGINT to the launch's process group as a terminal sends it; ``exit_recorder.py`` notes each
    worker's own exit code (torchrun reports none when it is interrupted itself)."""
    codes = tmp_path / "codes"
    argv = [*BASE, "--teacher", teacher, "--epochs", "100000", "--out", str(tmp_path / "run")]
    argv.remove("--no-progress")  # a line per epoch tells the test that training runs
    cmd = _launch(["--no-python", sys.executable, str(RECORD), str(codes), sys.executable, "-m", "kdlab", *argv], tmp_path)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "epoch 3/" in line:  # both workers past the first epoch (they share every step)
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(seen) + rest
    assert "terminate called" not in output, output[-4000:]
    recorded = codes.read_text().split() if codes.exists() else []
    assert sorted(recorded) == ["130", "130"], output[-4000:]
    assert output.count("kdlab: interrupted; completed epochs and checkpoints are kept") == 2, output[-4000:]
    assert "kdlab/" not in output.replace(str(tmp_path), ""), output[-4000:]  # no traceback through kdlab's code
