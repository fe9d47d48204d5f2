"""Data-parallel training under torchrun: two CPU processes (gloo) give the one-process result.

Each launch starts three Python processes (the torchrun agent and two workers), so the tests
launch torchrun twice in all: once as users do (``-m kdlab distill``) and once through
``ddp_driver.py``, which runs several commands (a run and its resume, FitNets, a refused batch
size) in one launch. The one-process references run in this process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.cli import main
from tests import subprocesses
from tests.train.launch import digits_teacher, torchrun_command, torchrun_env

DRIVER = Path(__file__).with_name("ddp_driver.py")
# global batch 128 of digits' 1437 training images: 11 full batches and a last one of 29 (shards of 14 and 15)
KD = ["distill", "digits-mlp", "--set", "student.train.scheduler.name=constant", "--no-progress"]
# accumulation: global micro-batches of 64, two per step; the last group is one micro-batch of 29
ACCUMULATE = [*KD, "--batch-size", "64", "--set", "student.train.accumulate_steps=2"]
FITNETS = [*KD, "--method", "fitnets", "--set", 'distill.fitnets.pairs={"net.1": "net.1"}', "--set", "distill.fitnets.weight=10"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return digits_teacher(tmp_path_factory.mktemp("ddp"), hidden=32)


def _torchrun(args: list, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocesses.run(torchrun_command(args), cwd=cwd, env=torchrun_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def _assert_same_student(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa["epoch"] == wb["epoch"]
    assert wa["state_dict"].keys() == wb["state_dict"].keys()
    for key in wa["state_dict"]:
        torch.testing.assert_close(wa["state_dict"][key], wb["state_dict"][key], atol=atol, rtol=0, msg=key)
    # the adapters (FitNets) are the method's parameters: all-reduced and saved like the student's
    assert _tensors(wa["method_state"]).keys() == _tensors(wb["method_state"]).keys()
    for key, value in _tensors(wa["method_state"]).items():
        torch.testing.assert_close(value, _tensors(wb["method_state"])[key], atol=atol, rtol=0, msg=key)


def _tensors(tree, prefix: str = "") -> dict:
    """Every tensor of a nested checkpoint entry, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}/{i}").items()}
    return {}


def _assert_rank_zero_files(run: Path) -> None:
    """The run's files, once: TensorBoard events from one process (rank 0) when tensorboard is installed."""
    names = sorted(p.name for p in run.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    assert [n for n in names if n not in events] == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "run.json"]
    assert len({n.rsplit(".", 2)[-2] for n in events}) <= 1, events  # one writer process id


def _metrics(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_metrics(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [m["epoch"] for m in ma] == [m["epoch"] for m in mb]
    for ra, rb in zip(ma, mb):
        for key in ("loss_total", "loss_hard", "loss_soft", "test_acc", "test_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key  # float32 sums in another order


def test_two_processes_train_like_one_process_with_the_same_global_batch(teacher, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*KD, "--teacher", teacher, "--epochs", "2", "--out", str(one)]) == 0
    proc = _torchrun(["-m", "kdlab", *KD, "--teacher", teacher, "--epochs", "2", "--out", str(two)], tmp_path)
    _assert_same_student(one, two)
    _assert_same_metrics(one, two)
    # rank 0 alone wrote the run folder and printed; each epoch is one line of metrics.jsonl
    assert [m["epoch"] for m in _metrics(two)] == [1, 2]
    _assert_rank_zero_files(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert proc.stdout.count("run folder:") == 1 and proc.stdout.count("teacher: checkpoint") == 1, proc.stdout


def test_resume_fitnets_accumulation_api_and_refusals_under_torchrun(teacher, tmp_path):
    plan = [
        [0, [*KD, "--teacher", teacher, "--epochs", "1", "--out", str(tmp_path / "resumed")]],
        [0, ["distill", "--resume", "--epochs", "2", "--out", str(tmp_path / "resumed"), "--no-progress"]],
        [0, [*FITNETS, "--teacher", teacher, "--epochs", "2", "--out", str(tmp_path / "fitnets2")]],
        [2, [*KD, "--teacher", teacher, "--epochs", "1", "--batch-size", "127", "--out", str(tmp_path / "refused")]],
        [2, [*KD, "--teacher", teacher, "--method", "crd", "--epochs", "1", "--out", str(tmp_path / "crd")]],
        [0, [*ACCUMULATE, "--teacher", teacher, "--epochs", "1", "--out", str(tmp_path / "accumulate2")]],
        [0, ["@api", str(tmp_path / "api")]],
        [0, ["@store", str(tmp_path / "store")]],
    ]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = _torchrun([str(DRIVER), str(tmp_path / "plan.json")], tmp_path)
    assert "kdlab: error: --batch-size=127 is the global batch and must be divisible by the 2 processes" in proc.stderr
    assert not (tmp_path / "refused").exists()
    assert "kdlab: error: method crd keeps per-sample state" in proc.stderr
    # one process, same global batch: the uninterrupted KD run, and FitNets (hooks, adapters, online teacher)
    assert main([*KD, "--teacher", teacher, "--epochs", "2", "--out", str(tmp_path / "one")]) == 0
    assert main([*FITNETS, "--teacher", teacher, "--epochs", "2", "--out", str(tmp_path / "fitnets1")]) == 0
    _assert_same_student(tmp_path / "one", tmp_path / "resumed")
    _assert_same_metrics(tmp_path / "one", tmp_path / "resumed")
    assert [m["epoch"] for m in _metrics(tmp_path / "resumed")] == [1, 2]
    assert len(json.loads((tmp_path / "resumed" / "run.json").read_text())["resumed"]) == 1
    assert main([*ACCUMULATE, "--teacher", teacher, "--epochs", "1", "--out", str(tmp_path / "accumulate1")]) == 0
    _assert_same_student(tmp_path / "accumulate1", tmp_path / "accumulate2")
    _assert_same_metrics(tmp_path / "accumulate1", tmp_path / "accumulate2")
    _assert_same_student(tmp_path / "fitnets1", tmp_path / "fitnets2")
    _assert_same_metrics(tmp_path / "fitnets1", tmp_path / "fitnets2")
    assert any(v.dim() == 2 for v in _tensors(_weights(tmp_path / "fitnets2")["method_state"]).values())  # an adapter's weight
    # kdlab.distill with a user's models and Dataset (sharded by a DistributedSampler): rank 0 wrote the run
    assert [m["epoch"] for m in _metrics(tmp_path / "api")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "run.json"]
    _assert_rank_zero_files(tmp_path / "resumed")
    # the signal store: 5 shards of 8 samples, rank 0 computed shards 0, 2, 4 and rank 1 shards 1, 3
    (store,) = [p for p in (tmp_path / "store").iterdir() if p.name.startswith("signals-")]
    assert not store.name.endswith(".partial") and (store / "meta.json").exists()
    value, rank = np.load(store / "value.npy"), np.load(store / "rank.npy")
    assert value[:, :, 0].tolist() == [[10 * i + v for v in range(2)] for i in range(40)]
    assert rank[:, 0, 0].tolist() == [float((i // 8) % 2) for i in range(40)]


@pytest.mark.parametrize("argv", [["compare", "digits-mlp"], ["tune", "digits-mlp", "--param", "T=1:4"], ["demo"]])
def test_study_commands_refuse_torchrun_in_one_line(argv, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in one process; launch it without torchrun" in err[0], err


def test_batch_size_must_divide_among_processes():
    from kdlab.errors import ConfigError
    from kdlab.train.distributed import check_batch_size

    check_batch_size(128, 2)
    check_batch_size(127, 1)
    with pytest.raises(ConfigError, match="batch_size=127 is the global batch and must be divisible by the 2 processes"):
        check_batch_size(127, 2)
