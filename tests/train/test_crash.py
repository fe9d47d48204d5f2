"""Crash consistency (issue 9, part 3): really kill a training process at the dangerous spots, resume, compare.

The spots are reached with the test-only hook in :func:`kdlab.utils._test_pause`
(``KDLAB_TEST_PAUSE_AFTER=NAME#N``): the process stops right after writing NAME for the N-th time, or
after writing NAME's temporary file but before renaming it into place (``NAME.tmp``), touches a signal
file and sleeps until it is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdlab.cli import main
from kdlab.train import load_checkpoint
from tests import subprocesses

SRC = str(Path(__file__).resolve().parents[2] / "src")
ARGS = ["train-student", "digits-mlp", "--set", "student.model.hidden=[8]", "--epochs", "4", "--no-progress"]
TIMING = {"train_seconds", "eval_seconds", "seconds"}
# SIGINT must raise KeyboardInterrupt even if the test runner was started with SIGINT ignored.
LAUNCH = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from kdlab.cli import main; sys.exit(main(sys.argv[1:]))"


def metrics(folder: Path) -> list:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def without_timing(records: list) -> list:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("*.tmp")) + sorted(p.name for p in folder.glob(".*.tmp"))


def stop_at(pause: str, args: list, tmp_path: Path, sig: int = signal.SIGKILL) -> subprocess.CompletedProcess:
    """Run the CLI until it pauses at ``pause``, then send ``sig``; returns the finished process."""
    flag = tmp_path / f"paused-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": SRC, "KDLAB_TEST_PAUSE_AFTER": pause, "KDLAB_TEST_PAUSE_SIGNAL": str(flag)}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + subprocesses.LIMIT
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"process never paused at {pause}: exit {proc.returncode}, stderr {err!r}")
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = subprocesses.communicate(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list:
    """metrics.jsonl of the same run, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return metrics(out)


def test_sigkill_at_every_dangerous_spot_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    """One run killed four times (each resume is killed at the next spot), then finished in-process."""
    run = tmp_path / "run"
    new, resume = [*ARGS, "--out", str(run)], [*ARGS, "--out", str(run), "--resume"]

    # 1. inside epoch 1, last.pt's temporary file written but not yet renamed into place
    assert stop_at("last.pt.tmp#1", new, tmp_path).returncode == -signal.SIGKILL
    assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()
    assert temp_files(run), "the kill should have left last.pt's temporary file behind"

    # 2. resumed from epoch 1 (no checkpoint yet), killed after best.pt, before metrics.jsonl
    assert stop_at("best.pt#1", resume, tmp_path).returncode == -signal.SIGKILL
    assert not temp_files(run), "the resume removed the stale temporary file"
    assert load_checkpoint(run / "last.pt")["epoch"] == 1 and metrics(run) == []

    # 3. resumed from epoch 1, killed in the dangerous window: epoch 2's last.pt written, best.pt and
    #    metrics.jsonl not (epoch 2 improves on epoch 1, so best.pt is now one best behind too)
    assert stop_at("last.pt#1", resume, tmp_path).returncode == -signal.SIGKILL
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["best_epoch"] == 2
    assert [m["epoch"] for m in metrics(run)] == [1], "checkpoint one epoch ahead of metrics"
    assert load_checkpoint(run / "best.pt")["epoch"] == 1

    # 4. resumed from epoch 2, killed while its repair rewrites metrics.jsonl (best.pt already repaired)
    assert stop_at("metrics.jsonl.tmp#1", resume, tmp_path).returncode == -signal.SIGKILL
    assert load_checkpoint(run / "best.pt")["epoch"] == 2, "best.pt rebuilt from last.pt"
    assert [m["epoch"] for m in metrics(run)] == [1] and load_checkpoint(run / "last.pt")["epoch"] == 2
    assert temp_files(run)

    # 5. resumed to the end
    assert main(resume) == 0
    final = metrics(run)
    assert [m["epoch"] for m in final] == [1, 2, 3, 4]
    assert without_timing(final) == without_timing(reference)
    assert not temp_files(run)
    best = max(final, key=lambda m: m["test_acc"])  # first epoch reaching the max, as fit() keeps it
    assert load_checkpoint(run / "best.pt")["epoch"] == best["epoch"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 4


def test_sigint_in_the_first_epoch_leaves_a_folder_resume_can_start_from(tmp_path, reference):
    run = tmp_path / "run"
    proc = stop_at("last.pt.tmp#1", [*ARGS, "--out", str(run)], tmp_path, sig=signal.SIGINT)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("kdlab: interrupted")
    assert "Traceback" not in proc.stderr
    assert not temp_files(run), "Ctrl-C mid-write removes its own temporary file"
    assert not (run / "last.pt").exists()
    assert main([*ARGS, "--out", str(run), "--resume"]) == 0
    assert without_timing(metrics(run)) == without_timing(reference)
