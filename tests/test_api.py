"""``kdlab.distill`` on a user's own modules and DataLoaders (issue 10, part 6)."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlab
from kdlab.errors import ConfigError


class TinyCNN(nn.Module):
    """A user's model: nothing kdlab-specific, named blocks."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(2 * width * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)).flatten(1))


class Flip(torch.utils.data.Dataset):
    """Per-sample augmentation inside the user's Dataset."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), self.y[i]


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    x[:, 0, :, :] += (y.float() - 1).view(-1, 1, 1)  # a learnable signal
    return x, y


@pytest.mark.parametrize("method,kwargs", [
    ("hinton", {}),
    ("fitnets", {"pairs": {"block2": "block2"}, "weight": 1.0, "hint_epochs": 1}),
    ("at", {"pairs": {"block1": "block1", "block2": "block2"}}),
])
def test_distill_any_module_with_a_user_dataloader(tmp_path, method, kwargs):
    x, y = _data()
    torch.manual_seed(0)
    teacher, student = TinyCNN(8), TinyCNN(2)
    teacher.train()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    train = DataLoader(Flip(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=32)
    result = kdlab.distill(student, teacher, train, val, method=method, T=4, epochs=2, out=tmp_path / "run", progress=False, **kwargs)
    assert result.student is student and len(result.history) == 2
    assert "val_acc" in result.final and "loss_total" in result.final
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # handed back as given
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert set(state["state_dict"]) == set(student.state_dict())  # the student only: adapters travel apart
    if method == "fitnets":
        assert any(k.startswith("adapters.") for k in state["method_state"])


def test_distill_refuses_unknown_method_parameters_in_one_line(tmp_path):
    x, y = _data(32)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with pytest.raises(ConfigError, match="distill.fitnets.pair: unknown key"):
        kdlab.distill(TinyCNN(2), TinyCNN(4), loader, loader, method="fitnets", pair={"a": "b"}, out=False)
    with pytest.raises(ConfigError, match="unknown method 'fitnet'"):
        kdlab.distill(TinyCNN(2), TinyCNN(4), loader, loader, method="fitnet", out=False)
