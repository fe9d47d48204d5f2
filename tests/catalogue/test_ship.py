"""Bad-input catalogue, shipping (``kdlab export``, ``kdlab profile``): exit 2, one stderr line naming
the problem and the fix, no file created or changed; an existing export target is replaced only
with --force; a model ONNX cannot express is named with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdlab
from kdlab.cli import main
from kdlab.models.registry import MODELS
from kdlab.train.checkpoint import model_payload, save_checkpoint
from tests.catalogue.harness import check_bad_input, snapshot
from tests.optional import require
from tests.user_models import TinyCNN

TINY = ["--set", "student.model.hidden=[8]", "--no-progress"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A teacher run, a distill run, a scratch run, a kdlab.distill run of a user's class, two taken files."""
    root = tmp_path_factory.mktemp("ship-template")
    assert main(["train-teacher", "digits-mlp", "--set", "teacher.model.hidden=[16]", "--epochs", "1", "--no-progress",
                 "--out", str(root / "teacher")]) == 0
    assert main(["distill", "digits-mlp", *TINY, "--epochs", "1", "--teacher", str(root / "teacher" / "best.pt"),
                 "--out", str(root / "distill")]) == 0
    assert main(["train-student", "digits-mlp", *TINY, "--epochs", "1", "--out", str(root / "scratch")]) == 0
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8) % 3), batch_size=4)
    kdlab.distill(TinyCNN(2), TinyCNN(4), loader, loader, epochs=1, out=root / "api", progress=False)
    (root / "taken.onnx").write_bytes(b"an older export\n")
    (root / "taken.pt").write_bytes(b"an older export\n")
    return root


def _teacher_gone(case: Path) -> None:
    info = json.loads((case / "distill" / "run.json").read_text())
    info["teacher_checkpoint"] = str(case / "gone.pt")
    (case / "distill" / "run.json").write_text(json.dumps(info))


CASES = {
    "export-onnx-exists": (["export", "distill", "--onnx", "taken.onnx"], ["taken.onnx already exists", "--force"], None),
    "export-torchscript-exists": (["export", "distill", "--torchscript", "taken.pt"], ["taken.pt already exists", "--force"], None),
    "export-second-target-exists": (["export", "distill", "--onnx", "new.onnx", "--torchscript", "taken.pt"],
                                    ["--torchscript taken.pt already exists"], None),
    "export-same-file-twice": (["export", "distill", "--onnx", "s.bin", "--torchscript", "s.bin"], ["name the same file"], None),
    "export-atol-negative": (["export", "distill", "--onnx", "s.onnx", "--atol", "-1"], ["--atol -1.0", "finite number > 0"], None),
    "export-atol-zero": (["export", "distill", "--torchscript", "s.pt", "--atol", "0"], ["--atol 0.0", "> 0"], None),
    "export-users-own-class": (["export", "api", "--onnx", "s.onnx"],
                               ["your own model class tests.user_models.TinyCNN", "kdlab.distill", "load its state_dict"], None),
    "profile-scratch-run": (["profile", "scratch"], ["run scratch records no teacher", "--teacher CHECKPOINT"], None),
    "profile-teacher-run": (["profile", "teacher"], ["records no teacher", "--teacher CHECKPOINT"], None),
    "profile-recorded-teacher-gone": (["profile", "distill"], ["gone.pt", "run.json", "does not exist", "--teacher"], _teacher_gone),
    "profile-teacher-flag-missing": (["profile", "distill", "--teacher", "nope.pt"], ["--teacher nope.pt does not exist"], None),
    "profile-users-own-class": (["profile", "api"], ["your own model class", "kdlab.ship.profile_models"], None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ship_bad_input(name, template, tmp_path):
    args, needles, prepare = CASES[name]
    if "--onnx" in args:
        require("onnx")
        require("onnxruntime")
        require("onnxscript")
    case = tmp_path / "case"
    shutil.copytree(template, case)
    if prepare is not None:
        prepare(case)
    check_bad_input(args, case, needles)


@pytest.mark.parametrize("flag,name", [("--onnx", "taken.onnx"), ("--torchscript", "taken.pt")])
def test_force_replaces_an_existing_export(flag, name, template, tmp_path, capsys):
    if flag == "--onnx":
        require("onnx")
        require("onnxruntime")
        require("onnxscript")
    case = tmp_path / "case"
    shutil.copytree(template, case)
    assert main(["export", str(case / "distill"), flag, str(case / name), "--force"]) == 0
    assert (case / name).read_bytes() != b"an older export\n" and not list(case.glob(".*.tmp"))


# ------------------------------------------------------------------ models ONNX cannot express


class DataDependent(nn.Module):
    """Branches in Python on a tensor's value: no graph can hold that."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return h if h.sum() > 0 else -h


class FixedBatch(nn.Module):
    """Reshapes to a constant batch of 2: the file could not take any batch size."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.reshape(2, 64))


class DictOut(nn.Module):
    """Returns its logits in a dict, as many users' models do."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return {"features": x.flatten(1), "logits": self.fc(x.flatten(1))}


MODEL_CLASSES = {"catalogue-data-dependent": DataDependent, "catalogue-fixed-batch": FixedBatch, "catalogue-dict-out": DictOut}


@pytest.fixture(autouse=True, scope="module")
def _catalogue_models():
    """These models exist for this module's tests only (other tests list the registry's names)."""
    added = [name for name in MODEL_CLASSES if name not in MODELS]
    for name in added:
        MODELS.register(name)(MODEL_CLASSES[name])
    yield
    for name in added:
        MODELS.unregister(name)


def _checkpoint(folder: Path, name: str) -> Path:
    torch.manual_seed(0)
    spec = {"shape": [1, 8, 8], "mean": 0.5, "std": 0.25, "pixel_max": 16.0}
    path = folder / f"{name}.pt"
    save_checkpoint(path, model_payload(MODEL_CLASSES[name]((1, 8, 8), 3), name, {}, (1, 8, 8), 3, role="student", input_spec=spec))
    return path


@pytest.mark.parametrize("name,needles", [
    ("catalogue-data-dependent", ["ONNX cannot express model 'catalogue-data-dependent'", "Python branch on a tensor's value",
                                  "torch.where", "not written", "--torchscript"]),
    ("catalogue-fixed-batch", ["model 'catalogue-fixed-batch'", "fixes the batch size", "x.shape[0]", "not written"]),
])
def test_a_model_onnx_cannot_express_is_one_line_naming_model_and_reason(name, needles, tmp_path, capsys):
    require("onnx")
    require("onnxruntime")
    require("onnxscript")
    source = _checkpoint(tmp_path, name)
    before = snapshot(tmp_path)
    code = main(["export", str(source), "--onnx", str(tmp_path / "s.onnx")])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kdlab: error:"), captured.err[:2000]
    assert "Traceback" not in captured.err and not captured.out
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("normalization", ["graph", "metadata"])
def test_a_model_returning_a_dict_exports_its_logits(normalization, tmp_path, capsys):
    ort = require("onnxruntime")
    require("onnx")
    require("onnxscript")
    from kdlab.ship import load_student

    source = _checkpoint(tmp_path, "catalogue-dict-out")
    out = tmp_path / "s.onnx"
    assert main(["export", str(source), "--onnx", str(out), "--normalization", normalization]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.rand(5, 1, 8, 8) * 16
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    model = load_student(source).model
    with torch.no_grad():
        want = model((x / 16.0 - 0.5) / 0.25 if normalization == "graph" else x)["logits"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
