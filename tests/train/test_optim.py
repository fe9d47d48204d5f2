"""The multistep LR scheduler: LR × gamma at each milestone epoch; its settings checked in one line."""

import pytest
import torch

from kdlab import ConfigError
from kdlab.config import SchedulerConfig
from kdlab.recipes import load_recipe
from kdlab.train.optim import SCHEDULERS, build_scheduler


def _lrs(cfg, epochs, warmup=0, lr=0.05):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, cfg, epochs, warmup)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_multistep_decays_at_each_milestone_by_hand():
    assert "multistep" in SCHEDULERS
    got = _lrs(SchedulerConfig(name="multistep", milestones=[150, 180, 210], gamma=0.1), 240)
    # epoch e (0-based) trains at lr · gamma^(number of milestones <= e)
    want = [0.05 * 0.1 ** sum(m <= e for m in (150, 180, 210)) for e in range(240)]
    assert got == pytest.approx(want, rel=1e-9)
    assert got[149] == pytest.approx(0.05) and got[150] == pytest.approx(0.005) and got[239] == pytest.approx(5e-5)


def test_multistep_after_warmup_counts_from_the_end_of_warmup():
    got = _lrs(SchedulerConfig(name="multistep", milestones=[2], gamma=0.5), 6, warmup=2, lr=0.3)
    assert got == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.15, 0.15])


def test_the_crd_schedule_reads_from_a_recipe():
    r = load_recipe("digits-mlp", ["student.train.scheduler={name: multistep, milestones: [150, 180, 210], gamma: 0.1}"])
    assert r.student.train.scheduler.milestones == [150, 180, 210]


@pytest.mark.parametrize("value, message", [
    ("{name: multistep, milestones: []}", "milestones: the multistep scheduler needs the epochs"),
    ("{name: multistep, milestones: [180, 150]}", "milestones: epochs must be strictly increasing"),
    ("{name: multistep, milestones: [150, 150]}", "milestones: epochs must be strictly increasing"),
    ("{name: multistep, milestones: [0, 10]}", "milestones: expected a list of epochs (integers >= 1)"),
    ("{name: multistep, milestones: [1.5]}", "milestones[0]: expected int, got 1.5"),
    ("{name: multistep, milestones: [10], gamma: 2}", "gamma: multistep multiplies the LR by gamma"),
    ("{name: multistep, milestones: [10], gamma: 0}", "gamma: must be a finite number > 0"),
])
def test_bad_multistep_settings_are_one_line(value, message):
    with pytest.raises(ConfigError) as info:
        load_recipe("digits-mlp", [f"student.train.scheduler={value}"])
    text = str(info.value)
    assert text.startswith("student.train.scheduler.") and message in text and "\n" not in text


def test_the_factory_checks_configs_built_in_python():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="strictly increasing"):
        build_scheduler(opt, SchedulerConfig(name="multistep", milestones=[3, 2]), 5)
