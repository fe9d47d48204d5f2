"""Intra-op threads chosen from the work's size, never from the load, never over the user's choice."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdlab import device
from kdlab.cli import main
from kdlab.device import SMALL_STEP_MACS, choose_threads, intra_op_threads, step_macs


@pytest.fixture
def four_default_threads(monkeypatch):
    """A process whose torch default is 4 threads (whatever this machine has), restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "_THREADS_AT_IMPORT", 4)
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_step_macs_counts_multiply_adds_by_hand():
    linear = nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
    assert step_macs(linear, torch.zeros(1, 64), 32) == (64 * 20 + 20 * 10) * 32
    conv = nn.Conv2d(1, 4, 3, padding=1)  # 28x28 outputs, 4 channels, 9 taps each
    assert step_macs(conv, torch.zeros(1, 1, 28, 28), 2) == 28 * 28 * 4 * 9 * 2


def test_step_macs_leaves_the_model_and_its_hooks_untouched():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    stats = model[1].running_mean.clone()
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(o.device))
    assert step_macs(model, torch.randn(1, 4), 8) == 4 * 4 * 8
    assert model.training and torch.equal(model[1].running_mean, stats) and calls == []
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_step_macs_of_a_model_that_cannot_be_copied_is_its_parameter_count():
    import threading

    class Locked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()  # not deep-copyable
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    model = Locked()
    assert step_macs(model, torch.zeros(1, 1, 28, 28), 2) == (4 * 9 + 4) * 2


def test_small_steps_take_one_thread_and_large_ones_keep_the_default(four_default_threads):
    n, why = choose_threads(SMALL_STEP_MACS - 1)
    assert n == 1 and "dispatch-bound" in why and f"{SMALL_STEP_MACS - 1:,}" in why
    n, why = choose_threads(SMALL_STEP_MACS)
    assert n == 4 and "torch's default" in why


def test_the_users_thread_count_always_wins(four_default_threads, monkeypatch):
    torch.set_num_threads(3)  # torch.set_num_threads after kdlab was imported
    assert choose_threads(10) == (3, "torch.set_num_threads (the user's choice)")
    torch.set_num_threads(4)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert choose_threads(10) == (4, "OMP_NUM_THREADS=4 (the user's choice)")


def test_the_choice_is_the_same_whatever_else_runs(four_default_threads):
    """Nothing but the step's size enters: two calls (a busy and a quiet moment alike) agree."""
    assert choose_threads(1_000) == choose_threads(1_000)


def test_intra_op_threads_restores_the_callers_count(four_default_threads):
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4


def test_a_small_student_trains_on_one_thread_recorded_in_run_json(four_default_threads, tmp_path):
    seen = []
    from kdlab.train.callbacks import Callback
    from kdlab.train import trainer as trainer_module

    class Spy(Callback):
        def on_epoch_start(self, trainer, epoch):
            seen.append(torch.get_num_threads())

    original = trainer_module.Trainer._fit

    def spying_fit(self):
        self.callbacks.callbacks.append(Spy())
        return original(self)

    trainer_module.Trainer._fit = spying_fit
    try:
        assert main(["train-student", "digits-mlp", "--epochs", "1", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    finally:
        trainer_module.Trainer._fit = original
    assert seen == [1]
    assert torch.get_num_threads() == 4  # handed back
    facts = json.loads((tmp_path / "s" / "run.json").read_text())["threads"]
    assert facts["intra_op"] == 1 and facts["step_multiply_adds"] < SMALL_STEP_MACS and "dispatch-bound" in facts["reason"]


def test_a_command_fixes_its_threads_before_the_teacher_runs_and_restores_them(four_default_threads, tmp_path, monkeypatch):
    """torch wants set_num_threads before eager work: after the teacher's 2-thread forwards a later
    switch did not take (measured), so the demo plans from its students before the teacher runs."""
    from kdlab.teacher import FrozenTeacher

    seen = []
    original = FrozenTeacher.logits_for

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FrozenTeacher, "logits_for", spy)
    monkeypatch.setenv("KDLAB_TEACHER_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--seeds", "2", "--epochs", "2", "--teacher-epochs", "1", "--no-plots", "--out", str(tmp_path / "d")]) == 0
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 4 and device.thread_plan() is None  # handed back after the command
