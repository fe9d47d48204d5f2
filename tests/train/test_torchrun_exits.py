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
import subprocess
import sys
from pathlib import Path

import pytest

from tests import subprocesses
from tests.train.launch import digits_teacher, torchrun_command, torchrun_env

RECORD = Path(__file__).with_name("exit_recorder.py")
BASE = ["distill", "digits-mlp", "--no-progress", "--epochs", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return digits_teacher(tmp_path_factory.mktemp("exits"), hidden=64)  # not smaller than the student: no warning line


def _worker_exit_codes(torchrun_output: str) -> list:
    """Per-rank exit codes from torchrun's failure summary (``exitcode  : 2 (pid: …)``)."""
    return sorted(int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+) \(pid", torchrun_output))


REFUSALS = {
    "batch-not-divisible": (["--batch-size", "127"], "is the global batch and must be divisible by the 2 processes"),
    "crd-per-sample-state": (["--method", "crd"], "method crd keeps per-sample state"),
    "missing-teacher-file": (["--teacher", "no-such-teacher.pt"], "no-such-teacher.pt"),
    # digits' 1437 training images in batches of 2: a last batch of 1 sample for 2 processes
    "last-batch-smaller-than-the-processes": (["--batch-size", "2"], "the last batch of each epoch holds 1 of 1437 samples"),
    "bad-setting": (["--set", "distill.temperature=-3"], "distill.temperature: must be a finite number > 0"),
}


@pytest.mark.parametrize("attempt", range(3))
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refusal_ends_every_worker_with_exit_2_and_one_line(case, attempt, teacher, tmp_path):
    extra, needle = REFUSALS[case]
    argv = [*BASE, "--teacher", teacher, "--out", str(tmp_path / "run"), *extra]
    proc = subprocesses.run(torchrun_command(["-m", "kdlab", *argv]), cwd=tmp_path, env=torchrun_env(), capture_output=True,
                            text=True)
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
    cmd = torchrun_command(["--no-python", sys.executable, str(RECORD), str(codes), sys.executable, "-m", "kdlab", *argv])
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if "epoch 3/" in line:  # both workers past the first epoch (they share every step)
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, _ = subprocesses.communicate(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = "".join(seen) + rest
    assert "terminate called" not in output, output[-4000:]
    recorded = codes.read_text().split() if codes.exists() else []
    assert sorted(recorded) == ["130", "130"], output[-4000:]
    assert output.count("kdlab: interrupted; completed epochs and checkpoints are kept") == 2, output[-4000:]
    assert "kdlab/" not in output.replace(str(tmp_path), ""), output[-4000:]  # no traceback through kdlab's code
