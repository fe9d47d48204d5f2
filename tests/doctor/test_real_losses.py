"""Diagnoses of losses as people really write them, each checked against an independent formula."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab import ConfigError
from kdlab.cli import main
from kdlab.doctor import diagnose, parse_layout
from kdlab.doctor.probes import Layout, make_probes
from kdlab.losses import SOFT_LOSSES

from . import buggy_losses as B

PATH = Path(__file__).parent / "buggy_losses.py"


def _no_nan(d):
    text = "\n".join(d.lines())
    assert "nan" not in re.findall(r"[a-z]+", text.lower()), text


@pytest.mark.parametrize(
    "fn, kwargs, hard, soft",
    [
        (B.DistillKL, {"init": {"T": 4.0}}, None, 1.0),
        (B.DistillKL, {}, None, 1.0),  # T required by the constructor: probed at 4 and 6
        (B.KDLoss, {"init": {"alpha": 0.7}}, 0.3, 0.7),
        (B.criterion, {}, None, 1.0),
        (B.named_soft, {}, None, 1.0),
        (B.named_logits, {}, None, 1.0),
        (B.targets_are_labels, {}, 0.1, 0.9),
    ],
)
def test_correct_real_world_losses(fn, kwargs, hard, soft):
    d = diagnose(fn, **kwargs)
    assert d.correct and d.matches == "hinton", d.lines()
    assert d.soft_weight == pytest.approx(soft, rel=1e-6)
    assert d.hard_weight == (None if hard is None else pytest.approx(hard, rel=1e-6))
    assert d.exponents == {"T": 2, "K": 0, "B": 0}


def test_module_with_mean_reduction():
    d = diagnose(B.MeanKD, init={"T": 2.0, "weight": 0.5})
    assert not d.correct and d.matches == "mean-reduction" and d.soft_weight == pytest.approx(0.5)
    assert any("reduction='mean'" in f for f in d.findings)


def test_soft_target_cross_entropy_is_correct_with_an_offset_note():
    d = diagnose(B.soft_target_ce, 3.0)
    assert d.correct and d.exponents["T"] == 2 and not d.findings
    # independent formula: the offset is T²·H(softmax(t/T)), batch-mean entropy of the first probe's teacher
    t = make_probes(Layout(), Layout().sizes, 0)[0].t
    entropy = torch.distributions.Categorical(logits=t / 3.0).entropy().mean().item()
    assert d.offset == pytest.approx(9.0 * entropy, rel=1e-9)
    assert any("teacher's entropy" in n for n in d.notes)
    assert "CORRECT: same gradient as the Hinton loss" in "\n".join(d.lines())
    assert diagnose(SOFT_LOSSES.get("hinton")).offset is None


def test_label_smoothing_is_a_hard_term_note():
    d = diagnose(B.label_smoothing, extra={"alpha": 0.3})
    assert d.correct, d.lines()
    assert d.label_smoothing == pytest.approx(0.1, rel=1e-6)  # F.cross_entropy(..., label_smoothing=0.1)
    assert d.hard_weight == pytest.approx(0.7, rel=1e-6) and d.soft_weight == pytest.approx(0.3, rel=1e-6)
    assert any(n.startswith("hard term: cross-entropy with label smoothing 0.1") for n in d.notes)


def test_hard_term_on_softened_logits_is_not_blamed_on_the_soft_term():
    d = diagnose(B.hard_on_softened)
    assert d.correct and d.soft_weight == pytest.approx(0.5, rel=1e-6) and d.exponents["T"] == 2, d.lines()
    assert any(n.startswith("hard term:") for n in d.notes)


@pytest.mark.parametrize(
    "fn, T, expect_T",
    [
        (SOFT_LOSSES.get("hinton"), 1.0, 2),  # T is an argument: probed at T=1 and 1.5
        (SOFT_LOSSES.get("no-T2"), 1.0, 0),
    ],
)
def test_T_equal_1_with_T_argument_reads_the_exponent(fn, T, expect_T):
    d = diagnose(fn, T)
    assert d.exponents["T"] == expect_T
    _no_nan(d)


def test_T_fixed_at_1_says_the_scaling_cannot_be_determined():
    d = diagnose(B.fixed_T1, 1.0)
    assert d.correct and d.exponents["T"] is None and d.soft_weight == pytest.approx(1.0)
    assert any("cannot be determined at this T" in n for n in d.notes)
    _no_nan(d)
    d = diagnose(B.pushed_away, B.TEMP)  # negative multiple at a fixed T: said, not T^nan
    assert not d.correct and any("cannot be determined at T=5" in f for f in d.findings)
    assert any("negative soft weight" in f for f in d.findings)
    _no_nan(d)


@pytest.mark.parametrize(
    "fn, shape, exps, note, problem",
    [
        (B.sequence_kd, "B,L,K", {"T": 2, "K": 0, "B": 0, "L": 1}, "summed over tokens (L) but averaged over the batch", None),
        (B.sequence_kd_token_mean, "B,L,K", {"T": 2, "K": 0, "B": 0, "L": 0}, "averaged over tokens (L)", None),
        (B.dense_kd, "B,K,H,W", {"T": 2, "K": 0, "B": 0, "H": 0, "W": 0}, "averaged over rows (H)", None),
        (B.sequence_summed_over_batch, "B,L=7,K", {"T": 2, "K": 0, "B": 1, "L": 1}, "summed over tokens", "sums over the batch"),
        (B.sequence_wrong_axis, "B,L,K", None, None, "not proportional"),
    ],
)
def test_sequence_and_dense_losses(fn, shape, exps, note, problem):
    d = diagnose(fn, layout=parse_layout(shape))
    assert d.correct == (problem is None), d.lines()
    if exps is not None:
        assert d.exponents == exps and d.soft_weight == pytest.approx(1.0, rel=1e-6)
    if note:
        assert any(note in n for n in d.notes), d.notes
    if problem:
        assert any(problem in f for f in d.findings), d.findings


def test_sequence_scaling_matches_the_formula():
    """sum over tokens / B = L · (mean over tokens): the value is L·T²·KL_mean, checked directly."""
    torch.manual_seed(0)
    s, t = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(3, 6, 5, dtype=torch.float64)
    per_token = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="none").sum(-1)
    assert B.sequence_kd(s, t, 2.0).item() == pytest.approx(4 * 6 * per_token.mean().item(), rel=1e-12)


@pytest.mark.parametrize(
    "fn, shape",
    [(B.sequence_kd, "B,L,K"), (B.dense_kd, "B,K,H,W")],
)
def test_function_asking_for_more_axes_gets_a_shape_hint(fn, shape):
    with pytest.raises(ConfigError, match=f"pass --shape {shape}") as exc:
        diagnose(fn)
    assert "\n" not in str(exc.value) and "ValueError: not enough values to unpack" in str(exc.value)


def _numbers(text, label):
    return [float(x) for x in re.search(label + r" \[([^\]]*)\]", text).group(1).split(",")]


@pytest.mark.parametrize("fn, word", [(B.log_of_softmax, "nan"), (B.returns_inf, "inf")])
def test_non_finite_results_are_reported_with_the_input(fn, word):
    d = diagnose(fn)
    assert not d.correct and d.matches is None
    finding = d.findings[-1]
    assert f"returns {word}" in finding or f"returns -{word}" in finding, finding
    s = torch.tensor([_numbers(finding, "student logits")], dtype=torch.float64)
    t = torch.tensor([_numbers(finding, "teacher logits")], dtype=torch.float64)
    T = float(re.search(r"T=([0-9.]+)", finding).group(1))
    assert not math.isfinite(fn(s, t, T).item())  # the printed input reproduces it


def test_cli_real_losses(capsys):
    assert main(["doctor", f"{PATH}:named_outputs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("doctor: using student=outputs, teacher=teacher_outputs (guessed from the names; "
                      "override with --student-arg/--teacher-arg)")
    assert sum(line.startswith("doctor: using") for line in out) == 1
    assert main(["doctor", f"{PATH}:MeanKD", "--init", "T=2", "--init", "weight=1"]) == 1
    assert "reduction='mean'" in capsys.readouterr().out
    assert main(["doctor", f"{PATH}:reversed_roles", "--student-arg", "student_view", "--teacher-arg", "teacher_view"]) == 0
    assert "guessed" not in capsys.readouterr().out
    assert main(["doctor", f"{PATH}:sequence_kd", "--shape", "B,L,K"]) == 0
    assert "summed over tokens (L) but averaged over the batch" in capsys.readouterr().out
    assert main(["doctor", f"{PATH}:fixed_T1", "-T", "1"]) == 0
    assert "T^nan" not in capsys.readouterr().out
    assert main(["doctor", f"{PATH}:log_of_softmax"]) == 1
    assert "PROBLEM: returns nan for student logits [" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["raises"], ["calling raises(", "RuntimeError: shapes do not match the config"]),
        (["BrokenInit"], ["constructing BrokenInit(T=4.0) failed with ValueError: needs a config file"]),
        (["unknown_names"], ["parameters: a, b, T", "--student-arg NAME --teacher-arg NAME"]),
        (["MeanKD", "--init", "T=2", "--init", "weight=.nan"], ["--init weight=nan", "finite"]),
        (["DistillKL", "--init", "T=2", "-T", "3"], ["disagree"]),
        (["sequence_kd", "--shape", "B,B,K"], ["--shape 'B,B,K'"]),
        (["sequence_kd", "--shape", "B,L=0,K"], ["size of L"]),
        (["sequence_kd", "--shape", "L,K"], ["batch axis B"]),
        (["named_soft", "-T", "nan"], ["-T must be > 0"]),
    ],
)
def test_cli_one_line_errors(argv, needles, capsys):
    assert main(["doctor", f"{PATH}:{argv[0]}", *argv[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    for needle in needles:
        assert needle in captured.err, captured.err
