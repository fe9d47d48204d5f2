import math

import pytest
import torch
import torch.nn.functional as F

from kdlab import ConfigError, kd_loss
from kdlab.cli import main
from kdlab.explain import explain


def test_worked_example_matches_torch():
    e = explain([2.0, 1.0, 0.1], [1.8, 0.9, 0.4], 0, 2.0, 1.0, 0.5)
    s, t = torch.tensor([[1.8, 0.9, 0.4]], dtype=torch.float64), torch.tensor([[2.0, 1.0, 0.1]], dtype=torch.float64)
    assert e.soft_labels == pytest.approx([0.5017, 0.3043, 0.1940], abs=1e-4)
    assert e.soft_predictions == pytest.approx([0.4686, 0.2988, 0.2327], abs=1e-4)
    assert e.hard_predictions == pytest.approx([0.6049, 0.2459, 0.1492], abs=1e-4)
    assert e.soft_term == pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-9)
    assert e.kl == pytest.approx(0.0046006, rel=1e-4)
    assert e.ce == pytest.approx(F.cross_entropy(s, torch.tensor([0])).item(), rel=1e-9)
    assert e.total == pytest.approx(-math.log(0.6048997) + 0.5 * 4 * 0.0046006, rel=1e-4)


def test_cli_explain_custom(capsys):
    assert main(["explain", "--teacher", "1,0", "--student", "0,0", "--label", "1", "-T", "1", "--soft-weight", "1"]) == 0
    out = capsys.readouterr().out
    p = math.e / (1 + math.e)
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)  # KL([e/(1+e), 1/(1+e)] || [.5, .5])
    assert "KL(p || q)" in out and f"= {kl:.4f}" in out


def test_explain_errors():
    with pytest.raises(ConfigError, match="label 3 is out of range"):
        explain([1, 2], [1, 2], 3, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="same number"):
        explain([1, 2, 3], [1, 2], 0, 1.0, 1.0, 1.0)


def _torch_reference(teacher, student, label, T, hw, sw):
    """Independent formula: torch's float64 log_softmax, kl_div (log_target) and cross_entropy."""
    t = torch.tensor([teacher], dtype=torch.float64)
    s = torch.tensor([student], dtype=torch.float64)
    log_p, log_q = F.log_softmax(t / T, 1), F.log_softmax(s / T, 1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True).item()
    ce = F.cross_entropy(s, torch.tensor([label])).item()
    return log_p.exp()[0].tolist(), kl, ce, hw * ce + sw * T * T * kl


@pytest.mark.parametrize(
    "teacher, student, label, T",
    [
        ([1000.0, 0.0, -1000.0], [-1000.0, 0.0, 1000.0], 0, 1.0),
        ([1e4, -1e4, 0.0], [0.0, 1e4, -1e4], 2, 2.0),
        ([-1e4, -1e4, 1e4], [1e4, 1e4, -1e4], 1, 0.5),
        ([1000.0, 0.5, -3.0, 1e4], [2.0, -1e4, 1000.0, 0.0], 3, 4.0),  # mixed magnitudes
        ([700.0, 0.0], [700.0, 0.0], 1, 1.0),
    ],
)
def test_extreme_logits_are_finite_and_match_torch(teacher, student, label, T):
    e = explain(teacher, student, label, T, 1.0, 0.5)
    p, kl, ce, total = _torch_reference(teacher, student, label, T, 1.0, 0.5)
    for x in (e.kl, e.soft_term, e.ce, e.total):
        assert math.isfinite(x)
    assert e.soft_labels == pytest.approx(p, abs=1e-12)
    assert e.kl == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert e.ce == pytest.approx(ce, rel=1e-9, abs=1e-12)
    assert e.total == pytest.approx(total, rel=1e-9, abs=1e-12)


def test_cli_explain_extreme_logits_prints_finite_numbers(capsys):
    assert main(["explain", "--teacher", "1000,0,-1000", "--student=-1e4,0,1e4", "-T", "1"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "inf" not in out.lower()
    _, kl, ce, total = _torch_reference([1000, 0, -1000], [-1e4, 0, 1e4], 0, 1.0, 1.0, 0.5)
    assert f"= {kl:.4f}" in out and f"= {ce:.4f}" in out and f"= {total:.4f}" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--teacher", "nan,1,2"], "teacher logits must be finite"),
        (["--student", "1,inf,2"], "student logits must be finite"),
        (["--teacher=-inf,1,2"], "teacher logits must be finite"),
        (["-T", "nan"], "T must be a finite number > 0"),
        (["-T", "inf"], "T must be a finite number > 0"),
        (["--soft-weight", "nan"], "--soft-weight must be a finite number"),
        (["--teacher", "1e308,0,0", "-T", "0.01"], "overflow"),
    ],
)
def test_cli_explain_refuses_non_finite_input_in_one_line(argv, needle, capsys):
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
