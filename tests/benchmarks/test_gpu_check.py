"""benchmarks/gpu_check.py on a CPU-only machine: the one-line skip, the table and exit status, and
one real check run tiny on the CPU (the checks are the same functions a GPU runs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_check"]


def test_without_cuda_it_prints_one_line_and_exits_0(gpu_check, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine that has a GPU
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [out.strip()] and out.startswith("no CUDA device: skipped")


def test_table_has_a_row_per_check_and_any_failure_exits_1(gpu_check):
    R = gpu_check.Result
    passed = [R("hinton-fp16", True, "fp16", 12.345, 5184.2, 811.6), R("pytest", True, "24 passed")]
    table = gpu_check.format_table(passed + [R("onnx export", False, "onnxruntime | missing")]).splitlines()
    assert table[0].startswith("| check | result | ms/step | images/s | max memory MB |") and len(table) == 5
    assert table[2] == "| hinton-fp16 | pass | 12.3 | 5184 | 812 | fp16 |"
    assert table[3] == "| pytest | pass | - | - | - | 24 passed |"
    assert table[4] == "| onnx export | FAIL | - | - | - | onnxruntime / missing |"  # a | in a note cannot break the row
    assert gpu_check.exit_code(passed) == 0
    assert gpu_check.exit_code(passed + [R("torchrun x1", False)]) == 1
    assert gpu_check.exit_code([]) == 1  # nothing checked is not a pass


def test_tiny_cpu_run_trains_one_epoch_then_export_is_called_on_it(gpu_check, tmp_path, capsys, monkeypatch):
    """One real distill check (fp16 becomes fp32 on the CPU), then the export row. kdlab export itself is
    tested in tests/ship; here its CLI entry is recorded, so the test stays fast."""
    import kdlab.cli

    calls = []

    def export(argv):
        calls.append(argv)
        Path(argv[argv.index("--onnx") + 1]).write_bytes(b"onnx")
        print("checked: onnxruntime vs PyTorch (recorded)")
        return 0

    monkeypatch.setattr(kdlab.cli, "main", export)
    code = gpu_check.main(["--device", "cpu", "--tiny", "--checks", "hinton-fp16,export", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert code == 0, out
    assert rows["hinton-fp32"][1] == "pass" and float(rows["hinton-fp32"][2]) > 0 and float(rows["hinton-fp32"][3]) > 0
    assert rows["hinton-fp32"][4] == "-"  # no CUDA memory on the CPU
    assert rows["hinton-fp32"][5].startswith("autocast fp32, GradScaler off; losses total ") and "soft" in rows["hinton-fp32"][5]
    assert (tmp_path / "hinton-fp32" / "best.pt").is_file()
    assert calls == [["export", str(tmp_path / "hinton-fp32"), "--onnx", str(tmp_path / "student.onnx"), "--force"]]
    assert rows["onnx export"][1] == "pass" and "recorded" in rows["onnx export"][5]


def test_a_check_that_raises_is_a_failed_row_and_exit_1(gpu_check, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "distill_epoch", broken)
    code = gpu_check.main(["--device", "cpu", "--tiny", "--checks", "fitnets-fp16,export", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "| fitnets-fp16 | FAIL |" in out and "RuntimeError: CUDA error: an illegal memory access" in out
    assert "| onnx export | FAIL |" in out and "no distill run finished" in out
    with pytest.raises(SystemExit, match="unknown check"):
        gpu_check.main(["--device", "cpu", "--checks", "fp64", "--out", str(tmp_path)])


def test_batchnorm_calibration_takes_the_batch_statistics_and_leaves_the_weights(gpu_check):
    import torch

    from kdlab.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", (3, 32, 32), 10)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(16, 3, 32, 32)
    gpu_check.calibrate_batchnorm(model, x)
    with torch.no_grad():
        first = model.conv1(x)
    assert torch.allclose(model.bn1.running_mean, first.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.bn1.running_var, first.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert not model.training and {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
