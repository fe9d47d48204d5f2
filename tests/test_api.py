"""``kdlab.distill`` on a user's own modules and DataLoaders (issue 10, part 6)."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import kdlab
from kdlab.data.loaders import IndexedDataset
from kdlab.errors import ConfigError
from tests.user_models import TinyCNN


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
    ("rkd", {}),  # the penultimate features: the heads' inputs
    ("crd", {"feat_dim": 8, "negatives": 16}),  # sample indices from the user's Dataset through IndexedDataset
    ("dkd", {"warmup": 1}),
])
def test_distill_any_module_with_a_user_dataloader(tmp_path, method, kwargs):
    x, y = _data()
    torch.manual_seed(0)
    teacher, student = TinyCNN(8), TinyCNN(2)
    teacher.train()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = IndexedDataset(Flip(x, y)) if method == "crd" else Flip(x, y)  # the documented wrapper for sample indices
    train = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
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


def test_several_teachers_stages_and_a_method_that_is_its_own_teacher(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    teachers = [TinyCNN(8), TinyCNN(4)]
    for t in teachers:
        t.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    result = kdlab.distill(TinyCNN(2), teachers, loader, loader, method="multi-teacher", weighting="accuracy", epochs=3,
                           out=False, progress=False, stages=[{"epochs": 1, "terms": {"hard": 1}}, {"reset_optimizer": True}])
    assert [r["stage"] for r in result.history] == [1, 2, 2] and result.history[0]["weight_soft"] == 0
    assert {"teacher_weight_0", "teacher_weight_1"} <= set(result.final)
    assert all(t.training and all(p.requires_grad for p in t.parameters()) for t in teachers)  # handed back as given
    own = kdlab.distill(TinyCNN(2), None, loader, loader, method="self-ema", epochs=1, out=False, progress=False)
    assert own.final["epoch"] == 1
    with pytest.raises(ConfigError, match="method 'hinton' needs a teacher"):
        kdlab.distill(TinyCNN(2), None, loader, loader, out=False)
    with pytest.raises(ConfigError, match=r"stages\[0\].terms: hint not a term"):
        kdlab.distill(TinyCNN(2), TinyCNN(4), loader, loader, epochs=2, out=False, stages=[{"epochs": 1, "terms": {"hint": 1}}, {}])


def test_crd_without_sample_indices_is_one_line_before_training(tmp_path):
    x, y = _data(32)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    with pytest.raises(ConfigError, match="crd needs sample indices.*IndexedDataset") as e:
        kdlab.distill(TinyCNN(2), TinyCNN(4), loader, loader, method="crd", out=tmp_path / "run", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_distill_resumes_its_run_folder_and_records_the_cli_facts(tmp_path):
    """resume=True continues out= from last.pt: the same weights and history as one uninterrupted
    run; run.json holds the choices kdlab made (step, teacher source, threads), as the CLI's does."""
    x, y = _data()

    def go(out, epochs, resume=False):
        torch.manual_seed(0)
        student, teacher = TinyCNN(3), TinyCNN(3)
        loader = DataLoader(TensorDataset(x, y), batch_size=32)  # a fixed order: a loader's own shuffle state is not saved
        if resume:  # the student continues from the checkpoint: its initial weights must not matter
            student = TinyCNN(3)
        return kdlab.distill(student, teacher, loader, DataLoader(TensorDataset(x, y), batch_size=48), epochs=epochs,
                             out=out, resume=resume, progress=False, lr=0.01)

    whole = go(tmp_path / "whole", 3)
    go(tmp_path / "split", 1)
    resumed = go(tmp_path / "split", 3, resume=True)
    assert [h["loss_total"] for h in resumed.history] == pytest.approx([h["loss_total"] for h in whole.history], rel=1e-6)
    for a, b in zip(whole.student.state_dict().values(), resumed.student.state_dict().values()):
        torch.testing.assert_close(a, b)
    info = json.loads((tmp_path / "split" / "run.json").read_text())
    assert info["step"] == "autograd" and info["teacher_source"] == "online" and "threads" in info
    assert len(info["resumed"]) == 1 and info["best_epoch"] >= 1
    with pytest.raises(ConfigError, match="resume=True but train.optimizer.lr"):
        kdlab.distill(TinyCNN(3), TinyCNN(3), DataLoader(TensorDataset(x, y), batch_size=32),
                      DataLoader(TensorDataset(x, y), batch_size=48), epochs=3, lr=0.1, out=tmp_path / "split",
                      resume=True, progress=False)
    with pytest.raises(ConfigError, match="holds no run to resume"):
        kdlab.distill(TinyCNN(3), TinyCNN(3), DataLoader(TensorDataset(x, y), batch_size=32),
                      DataLoader(TensorDataset(x, y), batch_size=48), out=tmp_path / "new", resume=True, progress=False)
