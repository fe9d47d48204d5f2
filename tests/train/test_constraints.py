"""train.max_norm: after every optimizer step each Linear row has L2 norm <= c, rows inside the
bound are untouched, and it follows every kind of step (closed form, chain, autograd)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab import ConfigError
from kdlab.config import TrainConfig
from kdlab.data import DatasetSplits, TensorData
from kdlab.methods import CE
from kdlab.models import build_model
from kdlab.train.build import build_trainer, grid_train_blocker
from kdlab.train.constraints import apply_max_norm, attach_max_norm, linear_weights


def test_rows_over_the_bound_are_scaled_onto_it_and_the_others_kept():
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]))  # norms 5, 0.5, 0
    apply_max_norm([w], 2.0)
    assert torch.allclose(w.data[0], torch.tensor([1.2, 1.6]))  # (3, 4) · 2/5: direction kept
    assert torch.equal(w.data[1:], torch.tensor([[0.3, 0.4], [0.0, 0.0]]))


def test_the_hook_runs_after_each_step_of_a_torch_optimizer():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=100.0)  # a huge step: rows leave the ball
    attach_max_norm(opt, model, 0.5)
    loss = model(torch.randn(8, 3)).pow(2).sum()
    loss.backward()
    opt.step()
    for w in linear_weights(model):
        assert float(w.detach().norm(dim=1).max()) <= 0.5 + 1e-6
    assert len(linear_weights(model)) == 2


def test_a_model_without_linear_layers_is_refused():
    with pytest.raises(ConfigError, match="train.max_norm constrains nn.Linear weights"):
        attach_max_norm(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), nn.Conv2d(1, 1, 1), 1.0)


def _data(n: int = 64) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g) * 10.0
    y = torch.arange(n) % 3
    return DatasetSplits("toy", TensorData(x, y), TensorData(x[:16], y[:16]), ["a", "b", "c"])


@pytest.mark.parametrize("dropout,precision", [(0.0, "fp32"), (0.5, "fp32"), (0.0, "bf16")])
def test_every_step_kind_keeps_the_bound(dropout, precision):
    """Chain (no dropout, fp32), autograd (dropout), autograd under bf16 autocast."""
    data = _data()
    torch.manual_seed(0)
    model = build_model("mlp", data.in_shape, 3, {"hidden": [8], "dropout": dropout})
    cfg = TrainConfig(epochs=2, batch_size=16, max_norm=0.3, precision=precision, tensorboard=False)
    cfg.optimizer.lr = 0.5
    trainer = build_trainer(model, CE(), data, cfg)
    trainer.fit()
    norms = [float(w.detach().norm(dim=1).max()) for w in linear_weights(model)]
    assert max(norms) <= 0.3 + 1e-5
    assert max(norms) > 0.29  # the bound was reached: the test is not vacuous
    if dropout == 0.0 and precision == "fp32":
        assert trainer.choices["step"] == "autograd-free chain"


def test_the_batched_grid_refuses_max_norm():
    assert "max_norm" in grid_train_blocker(TrainConfig(max_norm=1.0))
    assert grid_train_blocker(TrainConfig()) is None


def test_the_recipe_key_is_range_checked():
    from kdlab.recipes import load_recipe

    assert load_recipe("mnist-mlp", ["teacher.train.max_norm=15"]).teacher.train.max_norm == 15.0
    with pytest.raises(ConfigError, match=r"teacher.train.max_norm: must be a finite number > 0, got -1.0"):
        load_recipe("mnist-mlp", ["teacher.train.max_norm=-1"])
