"""``kdlab profile``: counts that can be checked by hand, sizes and latencies that are real measurements."""

from __future__ import annotations

import json

import pytest

from kdlab.cli import main
from kdlab.models import build_model, count_parameters
from kdlab.ship import load_student, profile_models, profile_run
from kdlab.ship.profile import flops_per_image, int8_state_dict_bytes, serialized_bytes

FAST = 0.02  # seconds of latency measurement per batch size


def _mlp(hidden, in_shape=(1, 8, 8)):
    return build_model("mlp", in_shape, 10, {"hidden": hidden}).eval()


@pytest.mark.parametrize("hidden", [[20, 20], [256, 128], [7]])
def test_mlp_flops_are_two_times_the_sum_of_in_times_out(hidden):
    widths = [64, *hidden, 10]
    assert flops_per_image(_mlp(hidden), (1, 8, 8)) == 2 * sum(a * b for a, b in zip(widths, widths[1:]))


def test_profile_side_by_side_counts_sizes_and_latencies():
    teacher, student = _mlp([512, 512]), _mlp([20])
    p = profile_models(teacher, student, (1, 8, 8), min_seconds=FAST, threads=1)
    assert p.threads == 1
    assert p.teacher.parameters == count_parameters(teacher) == 64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert p.student.parameters == 64 * 20 + 20 + 20 * 10 + 10
    for m in (p.teacher, p.student):
        assert set(m.latency_ms) == {1, 64} and all(v > 0 for v in m.latency_ms.values())
        assert m.fp32_bytes == serialized_bytes(teacher.state_dict() if m.role == "teacher" else student.state_dict())
        assert m.fp32_bytes > 4 * m.parameters  # every fp32 weight is in the file
    assert p.teacher.int8_bytes < p.teacher.fp32_bytes / 3  # Linear-heavy: int8 weights are ~4x smaller
    assert p.speedup(64) > 0 and p.accuracy_kept is None
    table = p.table()
    assert "| parameters | 301,066 | 1,510 |" in table and "torch.get_num_threads() = 1" in table and "n/a" in table
    json.dumps(p.as_dict())  # serialisable for reports


def test_int8_is_smaller_than_fp32_for_linear_layers():
    model = _mlp([256, 256])
    assert int8_state_dict_bytes(model) < serialized_bytes(model.state_dict()) / 3
    assert all(p.dtype.is_floating_point for p in model.parameters())  # the model itself is left as it was


def test_profile_of_a_distill_run_finds_its_teacher_and_accuracies(runs):
    p = profile_run(runs["distill"], min_seconds=FAST)
    info = json.loads((runs["distill"] / "run.json").read_text())
    student = load_student(runs["distill"])
    assert p.teacher.parameters == 64 * 64 + 64 + 64 * 10 + 10
    assert p.student.parameters == count_parameters(student.model)
    assert p.teacher.accuracy == pytest.approx(info["teacher_test_acc"])
    assert p.student.accuracy == pytest.approx(student.test_acc)
    assert p.accuracy_kept == pytest.approx(student.test_acc / info["teacher_test_acc"])


def test_cli_profile_run_and_recipe(runs, capsys):
    assert main(["profile", str(runs["distill"]), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| CPU latency, batch 64 |" in out and "% kept |" in out and "torch.get_num_threads() = 1" in out
    assert main(["profile", "digits-mlp", "--set", "teacher.model.hidden=[64]"]) == 0
    out = capsys.readouterr().out
    assert "recipe digits-mlp (untrained)" in out and "| test accuracy | n/a | n/a | n/a |" in out


@pytest.mark.parametrize("which,message", [("teacher", "records no teacher"), ("empty", "holds no best.pt or last.pt")])
def test_cli_profile_bad_input_one_line_exit_2(which, message, runs, tmp_path, capsys):
    folder = runs["teacher"] if which == "teacher" else tmp_path  # a teacher run has no teacher; an empty folder no checkpoint
    code = main(["profile", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("kdlab: error:") and message in err


def test_compare_report_includes_the_profile(tmp_path):
    from kdlab.recipes import load_recipe
    from kdlab.study.compare import compare
    from kdlab.study.report import write_report

    recipe = load_recipe("digits-mlp", ["teacher.model.hidden=[64]", "teacher.train.epochs=1", "student.train.epochs=1"])
    res = compare(recipe, "hinton", 2, teacher_cache=tmp_path / "cache", progress=False, log=lambda *_: None)
    assert res.profile.teacher.accuracy == pytest.approx(res.teacher["test_acc"])
    assert res.profile.student.accuracy == pytest.approx(sum(r.final_acc for r in res.of("hinton")) / 2)
    assert res.profile.student.parameters == 64 * 20 + 20 + 20 * 20 + 20 + 210
    out = write_report(res, tmp_path / "rep", plots=False)
    md = (out / "report.md").read_text()
    assert "## Cost: teacher vs student" in md and "| CPU latency, batch 1 |" in md and "% kept |" in md
    saved = json.loads((out / "results.json").read_text())["profile"]
    assert saved["student"]["flops_per_image"] == 2 * (64 * 20 + 20 * 20 + 20 * 10)
