"""Progress inside an epoch: lines every ``interval`` seconds off a terminal, driven by a fake clock."""

import pytest

from kdlab.methods import CE
from kdlab.pipeline import build_role_model
from kdlab.recipes import load_recipe
from kdlab.train import fit
from kdlab.train.callbacks import MAX_STRIDE, EpochProgress, duration, epoch_progress

TINY = ["student.model.hidden=[8]", "student.train.epochs=2", "student.train.batch_size=16"]


class FakeClock:
    """Seconds that move only when the test says a step took time; counts how often it is read."""

    def __init__(self) -> None:
        self.now, self.reads = 1000.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def _drive(progress: EpochProgress, clock: FakeClock, steps: int, seconds_per_step: float, epoch: int = 1):
    """One epoch of ``steps`` steps of ``seconds_per_step`` each, through the callback's wrapper."""
    progress.on_epoch_start(None, epoch)
    seen = []
    for item in progress.wrap_steps(None, range(steps), steps):
        clock.now += seconds_per_step  # the step itself
        seen.append(item)
    return seen


def test_lines_inside_an_epoch_every_interval_with_rate_and_time_left(capsys):
    clock = FakeClock()
    progress = EpochProgress("teacher", 3, bar=False, interval=30.0, clock=clock)
    progress.on_fit_start(type("T", (), {"start_epoch": 1})())
    assert _drive(progress, clock, 1000, 0.1) == list(range(1000))  # the steps pass through unchanged
    lines = capsys.readouterr().err.splitlines()
    # 100 s of steps: a line each 30 s (the clock is read about once a second: up to 1 s, 10 steps, late)
    assert len(lines) == 3
    steps = [int(line.split("step ")[1].split("/")[0]) for line in lines]
    gaps = [b - a for a, b in zip([0, *steps], steps)]
    assert all(300 <= gap <= 310 for gap in gaps), steps
    first = lines[0]
    assert first.startswith("teacher epoch 1/3: step ") and "/1000, 10.0 steps/s" in first
    n = steps[0]
    # time left from the measured rate (10 steps/s): this epoch, then 2 more epochs of 1000 steps each
    assert f"~{duration((1000 - n) / 10)} left in this epoch" in first
    assert f"~{duration((1000 - n) / 10 + 2 * 100)} left in all 3 epochs" in first


def test_the_clock_is_read_about_once_a_second_not_per_step(capsys):
    clock = FakeClock()
    progress = EpochProgress("scratch", 1, bar=False, interval=30.0, clock=clock)
    progress.on_fit_start(None)
    _drive(progress, clock, 20_000, 0.0005)  # 10 s of fast steps: no line, and ~10 clock reads, not 20,000
    assert capsys.readouterr().err == ""
    assert clock.reads <= 30
    clock.reads = 0
    _drive(progress, clock, 100_000, 0.0)  # a clock that never moves: the stride doubles up to its cap
    assert clock.reads <= 20 + 100_000 // MAX_STRIDE


def test_an_epoch_line_restarts_the_interval(capsys):
    clock = FakeClock()
    progress = EpochProgress("distill", 2, bar=False, interval=30.0, clock=clock)
    progress.on_fit_start(None)
    _drive(progress, clock, 250, 0.1)  # 25 s: no step line
    progress.on_epoch_end(None, 1, [{"loss_total": 0.5, "test_acc": 0.9, "seconds": 25.0}])
    _drive(progress, clock, 250, 0.1, epoch=2)  # 25 s since the epoch line: still none
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["distill epoch 1/2"]


def test_unknown_step_count_still_reports_steps_and_rate(capsys):
    clock = FakeClock()
    progress = EpochProgress("distill", 1, bar=False, interval=5.0, clock=clock)
    progress.on_fit_start(None)
    progress.on_epoch_start(None, 1)
    for _ in progress.wrap_steps(None, iter(range(100)), None):
        clock.now += 0.1
    (line,) = capsys.readouterr().err.splitlines()[:1]
    assert line.startswith("distill epoch 1/1: step ") and "steps/s" in line and "left" not in line


def test_training_prints_step_lines_off_a_terminal_and_none_with_no_progress(digits, capsys):
    """Through the real trainer (closed-form steps): a clock that jumps 60 s per read forces a line."""
    recipe = load_recipe("digits-mlp", TINY)

    class Jumping:
        def __init__(self):
            self.now = 0.0

        def __call__(self):
            self.now += 60.0
            return self.now

    steps = -(-len(digits.train) // 16)
    cb = epoch_progress(None, "scratch", 2, interval=30.0, clock=Jumping())
    fit(build_role_model(recipe, "student", digits), digits, recipe.student.train, CE(),
        progress=False, callbacks=[cb])
    lines = capsys.readouterr().err.splitlines()
    step_lines = [line for line in lines if ": step " in line]
    assert step_lines and all(f"/{steps}, " in line for line in step_lines)
    assert {line.split(":")[0] for line in step_lines} == {"scratch epoch 1/2", "scratch epoch 2/2"}
    assert sum(": loss " in line for line in lines) == 2  # the per-epoch lines are still there
    assert epoch_progress(False, "scratch", 2) is None  # --no-progress: nothing wraps the steps


def test_autograd_and_batched_steps_are_counted_too(digits, capsys):
    """The autograd step loop and the batched students' loop go through the same wrapper."""
    from kdlab.methods import CE
    from kdlab.train.build import build_grid_trainer

    recipe = load_recipe("digits-mlp", TINY + ["student.train.accumulate_steps=2"])  # accumulation: the autograd path
    counted = []

    class Count(EpochProgress):
        def wrap_steps(self, trainer, steps, total):
            counted.append(total)
            return super().wrap_steps(trainer, steps, total)

    fit(build_role_model(recipe, "student", digits), digits, recipe.student.train, CE(),
        progress=False, callbacks=[Count("x", 2, bar=False)])
    assert counted == [-(-len(digits.train) // 16)] * 2
    counted.clear()
    recipe = load_recipe("digits-mlp", TINY)
    students = [[build_role_model(recipe, "student", digits) for _ in range(2)]]
    trainer = build_grid_trainer(students, [CE()], [0, 1], digits, recipe.student.train, callbacks=[Count("x", 2, bar=False)])
    trainer.fit()
    assert counted == [-(-len(digits.train) // 16)] * 2


def test_a_terminal_gets_a_step_bar(digits, capsys):
    recipe = load_recipe("digits-mlp", TINY)
    fit(build_role_model(recipe, "student", digits), digits, recipe.student.train, CE(),
        progress=True, desc="scratch")
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "step" in err  # tqdm's step bar (it writes \r-refreshed lines)


@pytest.mark.parametrize("seconds,text", [(4.2, "4 s"), (89, "89 s"), (150, "2.5 min"), (7200, "2.0 h")])
def test_duration(seconds, text):
    assert duration(seconds) == text
