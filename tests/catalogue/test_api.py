"""Bad-input catalogue, Python API: ``kdlab.distill`` refuses bad models, data and settings with one
``ConfigError`` line naming the problem and the fix, before its run folder exists (no config.yaml,
no run.json, no empty folder), and never touches a finished run's files.

Models whose forward returns a container (an object or dict with ``logits``, a tuple) are read by
:func:`kdlab.logits.logits_of` and train exactly as the bare model does.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlab
from kdlab.errors import ConfigError
from tests.catalogue.harness import snapshot
from tests.user_models import TinyCNN


def _xy(n: int = 32, side: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, side, side, generator=g), torch.arange(n) % classes


def _loader(x=None, y=None, batch_size: int = 16, **kw) -> DataLoader:
    if x is None:
        x, y = _xy()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, **kw)


class Wrapped(nn.Module):
    """TinyCNN whose forward returns ``kind`` of container around its logits."""

    def __init__(self, width: int, kind: str) -> None:
        super().__init__()
        self.net, self.kind = TinyCNN(width), kind

    def forward(self, x):
        z = self.net(x)
        if self.kind == "object":  # as a Hugging Face ModelOutput: attributes (and a dict of them)
            return HFOutput(logits=z, hidden=x)
        return {"dict": {"features": x, "logits": z}, "tuple": (z, x), "list": [z], "no-logits": {"out": z},
                "str": "logits", "none": None, "tuple-of-str": ("a", z)}[self.kind]


class HFOutput(OrderedDict):
    """Mimics ``transformers.utils.ModelOutput``: an ordered dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Listed(torch.utils.data.Dataset):
    """A Dataset returning ``make(i)``: whatever a user's ``__getitem__`` returns."""

    def __init__(self, n: int, make: Callable[[int], Any]) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.make(i)


def _frozen_student() -> nn.Module:
    return TinyCNN(2).requires_grad_(False)


X, Y = _xy()

# name: (kwargs for kdlab.distill apart from out, words the one line must contain)
CASES: Dict[str, tuple] = {
    "input-shape": (lambda: dict(train_loader=_loader(*_xy(side=9))),
                    ["the student failed on inputs of shape [2, 1, 9, 9]", "mat1 and mat2", "expects"]),
    "val-input-shape": (lambda: dict(val_loader=_loader(*_xy(side=9))), ["student failed", "[2, 1, 9, 9]", "val_loader"]),
    "class-counts": (lambda: dict(student=TinyCNN(2, classes=4)), ["class count mismatch", "student outputs 4", "teacher 3"]),
    "multi-teacher-classes": (lambda: dict(teacher=[TinyCNN(4), TinyCNN(4, classes=5)], method="multi-teacher"),
                              ["class count mismatch", "teacher 1 5"]),
    "num-classes": (lambda: dict(num_classes=5), ["num_classes=5", "output 3 classes", "drop num_classes"]),
    "labels-out-of-range": (lambda: dict(train_loader=_loader(X, torch.arange(32) % 13)),
                            ["label 12", "out of range", "3 outputs", "0..2"]),
    "labels-later-in-dataset": (lambda: dict(train_loader=_loader(X, torch.cat([Y[:16], torch.full((16,), 7)]))),
                                ["label 7", "TensorDataset", "0..2"]),
    "val-labels-out-of-range": (lambda: dict(val_loader=_loader(X, Y + 3)), ["val_loader", "label 5", "out of range"]),
    "float-labels": (lambda: dict(train_loader=_loader(X, Y.float())), ["labels must be integer class indices", "torch.float32"]),
    "one-hot-labels": (lambda: dict(train_loader=_loader(X, nn.functional.one_hot(Y, 3))),
                       ["one class index per sample", "[16, 3]"]),
    "int32-labels": (lambda: dict(train_loader=_loader(X, Y.int())), ["torch.int32", ".long()"]),
    "double-data": (lambda: dict(train_loader=_loader(X.double(), Y)),
                    ["torch.float64 inputs", "student's weights are torch.float32", "x.to(torch.float32)"]),
    "double-student": (lambda: dict(student=TinyCNN(2).double()), ["student's weights are torch.float64", "match"]),
    "double-teacher": (lambda: dict(teacher=TinyCNN(4).double()), ["teacher's weights are torch.float64"]),
    "cuda-missing": (lambda: dict(device="cuda"), ["device='cuda'", "no usable CUDA device", "device='cpu'"]),
    "unknown-device": (lambda: dict(device="gpu"), ["device='gpu' is not a device", "'cpu'"]),
    "models-on-two-devices": (lambda: dict(teacher=TinyCNN(4).to("meta")),
                              ["different devices", "student on cpu", "teacher on meta", "device="]),
    "empty-dataset": (lambda: dict(train_loader=_loader(X[:0], Y[:0])), ["train_loader yields no batch", "empty Dataset"]),
    "drop-last-too-few": (lambda: dict(train_loader=_loader(X[:8], Y[:8], batch_size=16, drop_last=True)),
                          ["yields no batch", "drop_last"]),
    "empty-val": (lambda: dict(val_loader=_loader(X[:0], Y[:0])), ["val_loader yields no batch"]),
    "loader-yields-images-only": (lambda: dict(train_loader=DataLoader(Listed(32, lambda i: X[i]), batch_size=16)),
                                  ["(images, labels)", "return (x, y)"]),
    "loader-yields-dicts": (lambda: dict(train_loader=DataLoader(Listed(32, lambda i: {"x": X[i], "y": Y[i]}), batch_size=16)),
                            ["got dict", "return (x, y)"]),
    "not-a-loader": (lambda: dict(train_loader=[(X, Y)]), ["expected a torch DataLoader or Dataset, got list"]),
    "frozen-student": (lambda: dict(student=_frozen_student()), ["no trainable parameter", "requires_grad_(True)"]),
    "student-is-teacher": (lambda: (lambda m: dict(student=m, teacher=m))(TinyCNN(2)), ["student is also the teacher"]),
    "unknown-method-parameter": (lambda: dict(foo=1), ["method 'hinton' takes no parameters, got foo", "drop them"]),
    "unknown-fitnets-parameter": (lambda: dict(method="fitnets", pair={"block2": "block2"}), ["fitnets.pair: unknown key", "pairs"]),
    "pairs-missing-module": (lambda: dict(method="fitnets", pairs={"blok2": "block2"}), ["student has no module 'blok2'", "block2"]),
    "pairs-no-adapter": (lambda: dict(method="fitnets", pairs={"head": "block2"}), ["no adapter joins", "another layer pair"]),
    "weights-both-zero": (lambda: dict(hard_weight=0, soft_weight=0), ["hard_weight=0 and soft_weight=0", "weight > 0"]),
    "negative-weight": (lambda: dict(hard_weight=-1), ["hard_weight=-1", ">= 0"]),
    "grad-clip-negative": (lambda: dict(grad_clip=-1), ["grad_clip=-1", "> 0", "None for no clipping"]),
    "temperature-zero": (lambda: dict(T=0), ["T=0", "> 0"]),
    "lr-nan": (lambda: dict(lr=float("nan")), ["lr=nan", "finite"]),
    "output-dict-without-logits": (lambda: dict(student=Wrapped(2, "no-logits")),
                                   ["student's forward returned a dict without a 'logits' tensor", "'out'", "one rule"]),
    "output-string": (lambda: dict(teacher=Wrapped(4, "str")), ["teacher's forward returned a str", "one rule"]),
    "output-none": (lambda: dict(student=Wrapped(2, "none")), ["returned None", "one rule"]),
    "output-tuple-of-str": (lambda: dict(student=Wrapped(2, "tuple-of-str")), ["tuple whose first element is a str"]),
    "logits-not-2d": (lambda: dict(student=nn.Sequential(TinyCNN(2), nn.Flatten(0))), ["logits of shape [6]", "(batch, classes)"]),
    "out-is-a-file": (lambda: dict(out="afile"), ["afile is a file"]),
}


def _call(kwargs: Dict[str, Any], out: Any) -> None:
    args = dict(student=TinyCNN(2), teacher=TinyCNN(4), train_loader=_loader(), val_loader=_loader(), epochs=1, progress=False)
    args.update(kwargs)
    args.setdefault("out", out)
    kdlab.distill(args.pop("student"), args.pop("teacher"), args.pop("train_loader"), args.pop("val_loader"), **args)


@pytest.mark.parametrize("name", list(CASES))
def test_distill_bad_input_is_one_config_error_before_any_file(name, tmp_path, monkeypatch):
    make, needles = CASES[name]
    monkeypatch.chdir(tmp_path)  # the default run folder (runs/...) would land here
    (tmp_path / "afile").write_text("not a folder\n")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        _call(make(), tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch distill run (best.pt, last.pt, metrics.jsonl, config.yaml, run.json)."""
    root = tmp_path_factory.mktemp("api-run") / "run"
    torch.manual_seed(0)
    _call({}, root)
    assert {"best.pt", "last.pt", "metrics.jsonl", "config.yaml", "run.json"} <= {p.name for p in root.iterdir()}
    return root


@pytest.mark.parametrize("as_string", [False, True])
def test_distill_refuses_a_folder_holding_a_finished_run(finished, tmp_path, as_string):
    case = tmp_path / "run"
    shutil.copytree(finished, case)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as caught:
        _call({}, str(case) if as_string else case)
    message = str(caught.value)
    assert "\n" not in message and str(case) in message and "already holds a run" in message
    assert "another out=" in message and "delete" in message
    assert snapshot(tmp_path) == before  # best.pt, last.pt and metrics.jsonl untouched


def test_an_empty_folder_or_one_without_run_files_is_still_a_valid_out(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine\n")
    for folder in ("empty", "notes"):
        _call({}, tmp_path / folder)
        assert (tmp_path / folder / "best.pt").is_file()
    assert (tmp_path / "notes" / "readme.txt").read_text() == "mine\n"


@pytest.mark.parametrize("kind", ["object", "dict", "tuple", "list"])
@pytest.mark.parametrize("method", ["hinton", "fitnets", "self-ema"])
def test_container_outputs_train_exactly_as_the_bare_model(kind, method):
    """Same seed, same data: a model returning its logits inside a container ends with the same
    weights and metrics as the bare model (the rule reads the same tensor at every step and evaluation)."""
    x, y = _xy(48)

    def run(wrap: bool):
        torch.manual_seed(0)
        student, teacher = TinyCNN(2), TinyCNN(4)
        if wrap:  # the same weights inside a container-returning forward, for student and teacher
            ws, wt = Wrapped(2, kind), Wrapped(4, kind)
            ws.net.load_state_dict(student.state_dict())
            wt.net.load_state_dict(teacher.state_dict())
            student, teacher = ws, wt
        pairs = {"net.block2" if wrap else "block2": "net.block2" if wrap else "block2"}
        kw = {"pairs": pairs, "hint_epochs": 1} if method == "fitnets" else {}
        loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
        result = kdlab.distill(student, None if method == "self-ema" else teacher, loader, _loader(x, y), method=method,
                               epochs=2, out=False, progress=False, **kw)
        net = student.net if wrap else student
        return result.history, {k: v.clone() for k, v in net.state_dict().items()}

    (bare_history, bare), (wrapped_history, wrapped) = run(False), run(True)
    assert [h["val_acc"] for h in wrapped_history] == [h["val_acc"] for h in bare_history]
    assert [h["loss_total"] for h in wrapped_history] == pytest.approx([h["loss_total"] for h in bare_history], rel=1e-6)
    for k in bare:
        torch.testing.assert_close(wrapped[k], bare[k])
