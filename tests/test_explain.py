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
