"""Bias offsets: prior matching hits its target count, the test-set optimum is the brute-force
optimum, and shifting the output bias is adding the offset to the logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab import ConfigError
from kdlab.study.bias import (margins, predictions, prior_matching_offset, prior_offset_from_labels, shift_output_bias,
                              optimal_offset)


def _logits(n: int = 300, k: int = 10, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("classes", [[3], [7, 8]])
@pytest.mark.parametrize("target", [0, 1, 57, 299, 300])
def test_prior_matching_predicts_exactly_the_target_count(classes, target):
    z = _logits()
    b = prior_matching_offset(z, classes, target)
    assert int(torch.isin(predictions(z, classes, b), torch.tensor(classes)).sum()) == target


def test_the_target_comes_from_the_label_frequencies():
    z, y = _logits(), torch.arange(300) % 10  # 30 threes
    b = prior_offset_from_labels(z, y, [3])
    assert int((predictions(z, [3], b) == 3).sum()) == 30


def test_margins_are_where_predictions_flip():
    z = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.5]])
    assert torch.allclose(margins(z, [2]), torch.tensor([3.0, 1.5]))
    assert predictions(z, [2], 1.6).tolist() == [1, 2]
    assert predictions(z, [2], 3.1).tolist() == [2, 2]


@pytest.mark.parametrize("classes", [[3], [7, 8], [0, 1, 2, 4]])
def test_optimal_offset_is_the_brute_force_optimum(classes):
    z = _logits(200, 10, seed=3)
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(4))
    z[torch.arange(200), y] += 1.5  # a half-decent classifier
    best = optimal_offset(z, y, classes)
    grid = torch.linspace(-15, 15, 6001)
    brute = min(int((predictions(z, classes, float(b)) != y).sum()) for b in grid)
    assert best.errors == brute
    assert int((predictions(z, classes, best.offset) != y).sum()) == best.errors


def test_shift_output_bias_equals_adding_the_offset_to_the_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5))
    x = torch.randn(7, 4)
    before = model(x).detach()
    shift_output_bias(model, [1, 3], -2.5)
    after = model(x).detach()
    expected = before.clone()
    expected[:, [1, 3]] -= 2.5
    assert torch.allclose(after, expected, atol=1e-6)


def test_bad_class_sets_are_refused():
    z = _logits(10, 4)
    with pytest.raises(ConfigError, match="non-empty subset of 0..3"):
        margins(z, [4])
    with pytest.raises(ConfigError, match="on every class changes no prediction"):
        margins(z, [0, 1, 2, 3])
