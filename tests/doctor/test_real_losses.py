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
    "fn, shape, word, cause",
    [
        (B.sequence_kd, "B,L,K", "sequence", "ValueError: not enough values to unpack"),
        (B.dense_kd, "B,K,H,W", "dense", "ValueError: not enough values to unpack"),
        (B.llm_token_kd, "B,L,K", "sequence", "IndexError: Dimension out of range"),
    ],
)
def test_function_needing_more_axes_is_diagnosed_on_them(fn, shape, word, cause):
    """Fails on (B, K) but runs on (B, L, K) / (B, K, H, W): diagnosed there, with a note, same as with --shape."""
    d = diagnose(fn)
    assert d.layout == shape and d.correct, d.lines()
    assert d.notes[0].startswith(f"fails on (B, K) logits ({cause}") and f"diagnosed as {word} logits" in d.notes[0]
    given = diagnose(fn, layout=parse_layout(shape))
    assert d.exponents == given.exponents and d.soft_weight == pytest.approx(given.soft_weight, rel=1e-12)
    assert given.layout == shape and not any(n.startswith("fails on (B, K)") for n in given.notes)
    with pytest.raises(ConfigError, match=cause):  # a layout given with --shape is used as given
        diagnose(fn, layout=parse_layout("B,K"))


def _numbers(text, label):
    return [float(x) for x in re.search(label + r" \[([^\]]*)\]", text).group(1).split(",")]


def _reproduces(fn, text, dtype):
    """The input printed in ``text`` gives a NaN/inf value or student gradient again."""
    s = torch.tensor([_numbers(text, "student logits")], dtype=dtype, requires_grad=True)
    t = torch.tensor([_numbers(text, "teacher logits")], dtype=dtype)
    T = float(re.search(r"T=([0-9.]+)", text).group(1))
    out = fn(s, t, T)
    if not math.isfinite(out.item()):
        return True
    (g,) = torch.autograd.grad(out, s)
    return not bool(torch.isfinite(g).all())


def test_non_finite_results_are_reported_with_the_input():
    d = diagnose(B.returns_inf)
    assert not d.correct and d.matches is None
    finding = d.findings[-1]
    assert "returns -inf" in finding or "returns inf" in finding, finding
    bound = float(re.search(r"\(ordinary probe logits, \|logit\| <= ([0-9.]+)\)", finding).group(1))  # range stated
    p = make_probes(Layout(), Layout().sizes, 0, 1)[0]
    assert bound == pytest.approx(max(p.s.abs().max().item(), p.t.abs().max().item()), rel=1e-2)
    assert _reproduces(B.returns_inf, finding, torch.float64)  # the printed input reproduces it


@pytest.mark.parametrize("fn", [B.distributions_kl, B.log_of_softmax])
def test_correct_loss_that_overflows_only_at_huge_logits_gets_a_robustness_note(fn):
    """torch.distributions' Categorical KL and log(softmax) give inf/NaN only once softmax(s/T) underflows in float32:
    |logit| ~ 240 at T=4, while a trained network's |logit| stays below ~50."""
    d = diagnose(fn)
    assert d.correct and d.matches == "hinton" and not d.findings, d.lines()
    note = next(n for n in d.notes if n.startswith("robustness: "))
    finite = float(re.search(r"finite up to \|logit\| ~ ([0-9.]+) at T=4", note).group(1))
    assert 50 < finite < 4000 and "so fine for the |logit| <= 50 trained networks give" in note
    failing = next(e for e in d.evidence if e.startswith("at |logit| ~ "))
    assert float(re.search(r"at \|logit\| ~ ([0-9.]+):", failing).group(1)) == pytest.approx(finite, rel=0.05)
    assert _reproduces(fn, failing, torch.float32)
    # independent reason: a softmax(logits/T) probability of the printed row is below float32's smallest normal
    # number, where it underflows to 0 (Categorical's inf) or 1/p overflows (log(softmax)'s NaN gradient)
    rows = [torch.tensor(_numbers(failing, w), dtype=torch.float32) / 4 for w in ("student logits", "teacher logits")]
    assert any(float(F.softmax(r, 0).min()) < torch.finfo(torch.float32).tiny for r in rows)
    assert d.lines()[1].startswith("CORRECT")


def test_failure_at_realistic_logits_is_a_problem_with_the_range_probed():
    """A temperature of 0.1 (sharpening, as in DINO-style self-distillation) with log(softmax): NaN at |logit| <= 10."""
    d = diagnose(B.log_of_softmax, 0.1)
    assert not d.correct and d.matches is None
    finding = next(f for f in d.findings if f.startswith("returns "))
    assert re.search(r"\(float32 logits with \|logit\| <= (10|50), realistic for a trained network", finding), finding
    assert _reproduces(B.log_of_softmax, finding, torch.float32)
    assert max(abs(x) for x in _numbers(finding, "student logits") + _numbers(finding, "teacher logits")) <= 50 + 1e-3
    assert diagnose(SOFT_LOSSES.get("hinton"), 0.1).correct  # log-space Hinton is finite there


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
    assert main(["doctor", f"{PATH}:log_of_softmax"]) == 0  # NaN only at |logit/T| ~ 50 and beyond: a note
    assert "NOTE: robustness: finite up to |logit| ~" in capsys.readouterr().out
    assert main(["doctor", f"{PATH}:log_of_softmax", "-T", "0.1"]) == 1
    assert "PROBLEM: returns nan for student logits [" in capsys.readouterr().out
    assert main(["doctor", f"{PATH}:sequence_kd"]) == 0  # no --shape: diagnosed on (B, L, K), said so
    out = capsys.readouterr().out
    assert "NOTE: fails on (B, K) logits" in out and "diagnosed as sequence logits (B=8, L=5, K=10)" in out


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


def _grad(f, s):
    s = s.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(s), s)
    return g.flatten()


@pytest.mark.parametrize(
    "fn, T, form, hard",
    [
        (B.mse_logits, 4.0, "MSE between logits", None),
        (B.mse_soft_targets, 4.0, "MSE between softened probabilities", 0.1),
        (B.js_kd, 4.0, "Jensen-Shannon divergence", None),
        (B.cosine_kd, 1.0, "cosine distance of probabilities", None),
    ],
)
def test_losses_that_are_not_a_kl_are_named_and_compared_with_hinton(fn, T, form, hard):
    d = diagnose(fn)
    text = "\n".join(d.lines())
    assert not d.correct and d.shape == form, text
    assert "not a KL divergence" in d.findings[0] and "not proportional" in d.findings[0]
    assert "probabilities passed where KLDivLoss expects log-probabilities" not in text
    assert "for Hinton KD use F.kl_div(F.log_softmax(s/T, 1), F.softmax(t/T, 1), reduction='batchmean') * T**2" in d.notes
    # independent: the soft gradient (the 'hard' × CE part taken out) against F.kl_div's, on the doctor's probes
    ours, ref = [], []
    for p in make_probes(Layout(), Layout().sizes, 0):
        if hard is None:
            ours.append(_grad(lambda s: fn(s, p.t, T), p.s))
        else:
            ours.append(_grad(lambda s: fn(s, p.y, p.t, T) - hard * F.cross_entropy(s, p.y), p.s))
        ref.append(_grad(lambda s: F.kl_div(F.log_softmax(s / T, 1), F.softmax(p.t / T, 1), reduction="batchmean") * T * T, p.s))
    ours, ref = torch.cat(ours), torch.cat(ref)
    corr = float(torch.corrcoef(torch.stack([ours, ref]))[0, 1])
    assert d.versus_hinton["correlation"] == pytest.approx(corr, rel=1e-6)
    assert d.versus_hinton["norm_ratio"] == pytest.approx(float(ours.norm() / ref.norm()), rel=1e-6)
    assert f"correlation {corr:.3f}" in text and 0 < corr < 0.99


def test_unknown_soft_term_is_still_compared_with_hinton():
    d = diagnose(B.sequence_wrong_axis, layout=parse_layout("B,L,K"))
    assert not d.correct and d.shape is None and -1 <= d.versus_hinton["correlation"] < 0.99
    assert any("vs Hinton's (T²·KL, T=4): correlation" in e for e in d.evidence)
