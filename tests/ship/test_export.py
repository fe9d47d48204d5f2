"""``kdlab export``: the file reproduces PyTorch, takes any batch size, needs no kdlab preprocessing
when the normalisation is in the graph, holds only the student, and is never left half-checked."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from kdlab.cli import main
from kdlab.data import DATASETS
from kdlab.errors import ExportError
from kdlab.models import count_parameters
from kdlab.ship import RawPixelInput, export_onnx, export_torchscript, load_student
from kdlab.ship import export as export_module
from kdlab.train import evaluate, load_checkpoint
from tests.optional import require

onnx = require("onnx")
ort = require("onnxruntime")
require("onnxscript")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _raw_test_pixels() -> torch.Tensor:
    """The digits test images as scikit-learn stores them (0..16), what a deployed model receives."""
    raw = DATASETS.get("digits")(None, False)
    return (raw.test_x * 16.0).unsqueeze(1)


def test_onnx_matches_pytorch_at_any_batch_and_records_opset_and_input(runs, tmp_path):
    out = tmp_path / "student.onnx"
    result = export_onnx(runs["distill"], out)
    assert set(result.max_abs_diff) == {1, 64} and max(result.max_abs_diff.values()) <= 1e-4
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["kdlab.normalization"] == "graph" and meta["kdlab.opset"] == "18"
    spec = json.loads(meta["kdlab.input_spec"])
    assert spec["pixel_max"] == 16.0 and spec["shape"] == [1, 8, 8]
    session = _session(out)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic, dynamic batch axis
    student = load_student(runs["distill"])
    wrapped = RawPixelInput(student.model, spec["pixel_max"], spec["mean"], spec["std"]).eval()
    for batch in (3, 257):  # neither of the sizes the command checked
        x = torch.rand(batch, 1, 8, 8) * 16
        with torch.no_grad():
            torch.testing.assert_close(_run(session, x), wrapped(x), rtol=0, atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))


def test_graph_normalisation_gives_kdlabs_predictions_on_raw_pixels(runs, tmp_path):
    data = runs["data"]
    student = load_student(runs["distill"])
    with torch.no_grad():
        kdlab_pred = student.model(data.test.x).argmax(1)
    kdlab_acc = evaluate(student.model, data.test)["acc"]
    export_onnx(runs["distill"], tmp_path / "raw.onnx")
    pred = _run(_session(tmp_path / "raw.onnx"), _raw_test_pixels()).argmax(1)
    assert torch.equal(pred, kdlab_pred)
    assert float((pred == data.test.y).float().mean()) == pytest.approx(kdlab_acc)
    # metadata mode: the model as trained; the recorded formula turns raw pixels into its input
    result = export_onnx(runs["distill"], tmp_path / "norm.onnx", normalization="metadata")
    assert "NOT in the graph" in result.input_desc
    proto = onnx.load(str(tmp_path / "norm.onnx"))
    spec = json.loads({p.key: p.value for p in proto.metadata_props}["kdlab.input_spec"])
    x = (_raw_test_pixels() / spec["pixel_max"] - spec["mean"]) / spec["std"]
    assert torch.equal(_run(_session(tmp_path / "norm.onnx"), x).argmax(1), kdlab_pred)


def test_fitnets_adapters_are_not_exported(runs, tmp_path):
    last = load_checkpoint(runs["fitnets"] / "last.pt")
    adapter_keys = [k for k in _flat_keys(last["method_state"]) if "adapter" in k]
    assert adapter_keys  # the run did train an adapter (saved as method state, beside the model)
    export_onnx(runs["fitnets"], tmp_path / "f.onnx")
    proto = onnx.load(str(tmp_path / "f.onnx"))
    weights = {t.name: math.prod(t.dims) for t in proto.graph.initializer if t.name.startswith("model.")}
    others = [t for t in proto.graph.initializer if not t.name.startswith("model.")]
    student = load_student(runs["fitnets"]).model
    assert {k.removeprefix("model.") for k in weights} == set(student.state_dict())
    assert sum(weights.values()) == count_parameters(student)
    assert all(math.prod(t.dims) <= 2 for t in others)  # the scaling constants and a reshape shape, no weights


def _flat_keys(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat_keys(v, f"{prefix}{k}.")
    else:
        yield prefix


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export_loads_without_kdlab_and_takes_any_batch(runs, tmp_path):
    result = export_torchscript(runs["distill"], tmp_path / "s.pt")
    extra = {"kdlab.json": ""}
    loaded = torch.jit.load(str(tmp_path / "s.pt"), _extra_files=extra)
    assert json.loads(extra["kdlab.json"])["kdlab.normalization"] == "graph"
    assert loaded(torch.rand(5, 1, 8, 8) * 16).shape == (5, 10) and result.format == "torchscript"


def _cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_what_it_checked_and_where_the_normalisation_is(runs, tmp_path, capsys):
    code, out, err = _cli(["export", str(runs["distill"]), "--onnx", str(tmp_path / "a" / "s.onnx"),
                           "--torchscript", str(tmp_path / "s.pt")], capsys)
    assert code == 0 and not err
    assert "ONNX opset 18, dynamic batch axis" in out and "is part of the graph" in out
    assert "onnxruntime vs PyTorch" in out and "at batch 1" in out and "at batch 64" in out
    assert (tmp_path / "a" / "s.onnx").is_file() and (tmp_path / "s.pt").is_file()
    code, out, _ = _cli(["export", str(runs["distill"]), "--onnx", str(tmp_path / "m.onnx"), "--normalization", "metadata"], capsys)
    assert code == 0 and "recorded in the metadata" in out


@pytest.mark.parametrize("case,message", [
    ("missing", "run folder"),
    ("empty", "holds no best.pt or last.pt"),
    ("under-file", "which is a file"),
    ("nothing", "nothing to export"),
    ("no-ort", "pip install 'kdlab[onnx]'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, message, runs, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    run = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(case, runs["distill"])
    target = tmp_path / ("file/s.onnx" if case == "under-file" else "out/s.onnx")
    args = ["export", str(run)] + ([] if case == "nothing" else ["--onnx", str(target)])
    if case == "no-ort":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    code, out, err = _cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("kdlab: error:") and message in err
    assert "Traceback" not in err and not out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_mismatch_fails_loudly_and_leaves_no_file(fmt, runs, tmp_path, capsys, monkeypatch):
    if fmt == "onnx":
        real = export_module._ort_outputs
        monkeypatch.setattr(export_module, "_ort_outputs", lambda session, x: real(session, x) + 1e-3)
    else:
        real_compare = export_module._compare
        monkeypatch.setattr(export_module, "_compare", lambda ref, run, *a: real_compare(ref, lambda x: run(x) + 1e-3, *a))
    target = tmp_path / f"s.{fmt}"
    code, out, err = _cli(["export", str(runs["distill"]), f"--{fmt}", str(target)], capsys)
    assert code == 2 and err.count("\n") == 1 and "differs from PyTorch by 0.001" in err and "not written" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    with pytest.raises(ExportError, match="tolerance 0.0001"):
        (export_onnx if fmt == "onnx" else export_torchscript)(runs["distill"], target)
    assert not target.exists()
