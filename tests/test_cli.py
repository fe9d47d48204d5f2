import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from kdlab.cli import main
from tests import subprocesses

COMMANDS = ["train-teacher", "train-student", "distill", "demo", "recipes"]
FAST = ["--set", "teacher.model.hidden=[32]", "--teacher-epochs", "1", "--student-epochs", "1", "--no-progress"]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kdlab", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: kdlab " + command in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["distill", "digits-mlp", "-T", "0"], "distill.temperature: must be a finite number > 0"),
        (["distill", "digits-mlp", "--soft-weight", "-1"], "distill.soft_weight: must be a finite number >= 0"),
        (["train-teacher", "digits-mlp", "--set", "teacher.train.epoch=1"], "teacher.train.epoch: unknown key"),
        (["train-teacher", "digits-mlp", "--set", "teacher.train.epochs=many"], "expected int, got 'many'"),
        (["train-student", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["train-teacher", "mnist-mlp", "--data-dir", "EMPTY", "--no-download"], "t10k-labels-idx1-ubyte.gz"),
        (["distill", "digits-mlp", "--teacher", "MISSING.pt"], "checkpoint MISSING.pt not found"),
        (["train-teacher", "--epochs", "x"], "argument --epochs: invalid int value"),
        (["frobnicate"], "invalid choice"),
        (["train-teacher", "--resume"], "--resume needs --out"),
        (["train-teacher", "digits-mlp", "--set", "teacher.augment={crop: -1}"], "teacher.augment.crop: padding"),
        (["train-teacher", "digits-mlp", "--set", "teacher.augment={zoom: 2}"], "teacher.augment.zoom: unknown augmentation"),
        (["distill", "digits-mlp", "--set", "student.augment={flip: true}"], "student.augment: the students' batches"),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    code = None
    try:
        code = main(args)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("kdlab")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = run_cli("distill", "digits-mlp", "--temperature", "-3", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["kdlab: error: distill.temperature: must be a finite number > 0, got -3.0 (see `kdlab distill --help`)"]


def test_corrupt_teacher_checkpoint(tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"garbage")
    assert main(["distill", "digits-mlp", "--teacher", str(bad), "--out", str(tmp_path / "o")] + FAST[:2]) == 2
    assert "is corrupt or not a kdlab checkpoint" in capsys.readouterr().err


def test_demo_prints_paired_difference_recomputed_from_its_per_seed_accuracies(tmp_path, capsys):
    """The printed mean ± std, paired difference, interval and win count follow from demo.json's accuracies."""
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--seeds", "4", "--seed", "3", "--teacher-cache", str(tmp_path / "cache")]
                + FAST) == 0
    out = capsys.readouterr().out
    saved = json.loads((out_dir / "demo.json").read_text())
    assert [r["seed"] for r in saved["per_seed"]] == [3, 4, 5, 6]
    scratch = np.array([r["scratch_acc"] for r in saved["per_seed"]]) * 100
    distilled = np.array([r["distilled_acc"] for r in saved["per_seed"]]) * 100
    diff = distilled - scratch
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert stats.ttest_rel(distilled, scratch).pvalue == pytest.approx(saved["distilled_minus_scratch"]["p_value"], abs=1e-9)
    wins = int((diff > 0).sum())
    assert f"| student, scratch | 1,930 | {scratch.mean():.2f} ± {scratch.std(ddof=1):.2f} | 4 (3–6) |" in out
    assert f"| student, distilled | 1,930 | {distilled.mean():.2f} ± {distilled.std(ddof=1):.2f} | 4 (3–6) |" in out
    assert f"distilled − scratch (paired by seed): {diff.mean():+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}]" in out
    assert f"distilled ahead on {wins}/4 seeds" in out
    assert "per seed, distilled − scratch (points): " + ", ".join(f"{s}: {d:+.2f}" for s, d in zip(range(3, 7), diff)) in out
    assert "| teacher | 2,410 |" in out and "dataset digits" in out
    assert f"run folder: {out_dir}" in out and (out_dir / "report.md").is_file()


def test_train_then_distill_from_checkpoint(tmp_path, capsys):
    assert main(["train-teacher", "digits-mlp", "--epochs", "1", "--out", str(tmp_path / "t"), "--set", "teacher.model.hidden=[32]"]) == 0
    assert main(["distill", "digits-mlp", "--teacher", str(tmp_path / "t" / "best.pt"), "--epochs", "2", "-T", "2",
                 "--hard-weight", "0.2", "--soft-weight", "0.8", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "distill: final test acc" in out
    cfg = (tmp_path / "s" / "config.yaml").read_text()
    assert "temperature: 2.0" in cfg and "hard_weight: 0.2" in cfg and "soft_weight: 0.8" in cfg


def test_verbose_prints_the_runs_plan_with_its_reasons_as_run_json_records_it(tmp_path, capsys):
    assert main(["train-teacher", "digits-mlp", "--epochs", "1", "--out", str(tmp_path / "t"), "--set", "teacher.model.hidden=[32]",
                 "--no-progress"]) == 0
    assert main(["distill", "digits-mlp", "--teacher", str(tmp_path / "t" / "best.pt"), "--epochs", "1", "--method", "fitnets",
                 "--set", "distill.fitnets.pairs={net.1: net.1}", "-v", "--no-progress", "--out", str(tmp_path / "s"),
                 "--teacher-online"]) == 0
    err = capsys.readouterr().err
    info = json.loads((tmp_path / "s" / "run.json").read_text())
    assert info["step"] == "autograd" and info["teacher_source"] == "online"
    assert f"kdlab: step: autograd ({info['step_reason']})" in err and "intermediate features" in info["step_reason"]
    assert f"kdlab: teacher: online ({info['teacher_source_reason']})" in err
    # without --teacher-online, the teacher's features come from the stored teacher signal
    assert main(["distill", "digits-mlp", "--teacher", str(tmp_path / "t" / "best.pt"), "--epochs", "1", "--method", "fitnets",
                 "--set", "distill.fitnets.pairs={net.1: net.1}", "-v", "--no-progress", "--out", str(tmp_path / "s2")]) == 0
    err = capsys.readouterr().err
    info = json.loads((tmp_path / "s2" / "run.json").read_text())
    assert info["teacher_source"] == "stored signals" and info["teacher_signals"]["views"] == 1
    assert f"kdlab: teacher: stored signals ({info['teacher_source_reason']})" in err
    assert main(["train-student", "digits-mlp", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "q")]) == 0
    assert "kdlab: step:" not in capsys.readouterr().err  # quiet without -v
    assert json.loads((tmp_path / "q" / "run.json").read_text())["step"] == "autograd-free chain"


def test_distill_with_a_method_from_the_command_line(tmp_path, capsys):
    assert main(["train-teacher", "digits-mlp", "--epochs", "1", "--out", str(tmp_path / "t"), "--set", "teacher.model.hidden=[32]"]) == 0
    assert main(["distill", "digits-mlp", "--teacher", str(tmp_path / "t" / "best.pt"), "--epochs", "1", "--method", "rkd",
                 "--set", "distill.rkd.angle_weight=10", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    cfg = (tmp_path / "s" / "config.yaml").read_text()
    assert "method: rkd" in cfg and "angle_weight: 10" in cfg
    record = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss_rkd_distance", "loss_rkd_angle"} <= set(record) and record["angle_weight"] == 10
    capsys.readouterr()
    assert main(["distill", "digits-mlp", "--method", "rdk", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "distill.method: unknown value 'rdk'" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_recipes_command(capsys):
    assert main(["recipes"]) == 0
    assert "mnist-mlp" in capsys.readouterr().out
    assert main(["recipes", "mnist-cnn", "--set", "seed=4"]) == 0
    assert "seed: 4" in capsys.readouterr().out


def test_data_dir_with_quotes_and_backslashes_survives_the_override(tmp_path):
    from kdlab.cli import build_parser
    from kdlab.cli_recipe import recipe_overrides
    from kdlab.recipes import load_recipe

    weird = str(tmp_path / "it's a \\ \"dir\"")
    args = build_parser().parse_args(["train-student", "mnist-mlp", "--data-dir", weird])
    assert load_recipe("mnist-mlp", recipe_overrides(args, "student")).dataset.data_dir == weird


@pytest.mark.parametrize("command", ["compare", "tune", "doctor", "losses", "explain"])
def test_new_commands_have_help_without_format_leftovers(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "%%" not in out and "usage: kdlab " + command in out


def test_layers_lists_module_names_and_shapes(capsys):
    assert main(["layers", "digits-mlp", "--role", "student", "--set", "student.model.hidden=[12]"]) == 0
    out = capsys.readouterr().out
    assert "net.0   Linear" in out and "[2, 12]" in out and "teacher" not in out
    assert "penultimate feature (the rkd/crd default): the input of 'net.2', [2, 12]" in out


def test_methods_lists_registered_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("hinton", "fitnets", "at", "ce", "rkd", "crd", "dkd", "multi-teacher", "self-ema"):
        assert f"\n{name} " in f"\n{out}"


FLOAT_FLAGS = [
    ("train-teacher", "--lr"), ("train-student", "--val-fraction"), ("distill", "-T"), ("distill", "--hard-weight"),
    ("distill", "--soft-weight"), ("demo", "--temperature"), ("compare", "--soft-weight"), ("compare", "--target-acc"),
    ("tune", "--val-fraction"),
]


@pytest.mark.parametrize("command,flag", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_float_flags_refuse_non_finite_values(command, flag, value, capsys):
    """Python's float() accepts 'nan' and 'inf'; every float flag must not."""
    extra = ["--param", "T=1:2"] if command == "tune" else []
    with pytest.raises(SystemExit) as exc:
        main([command, "digits-mlp", *extra, f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert f"must be a finite number, got '{value}'" in err and f"(see `kdlab {command} --help`)" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["compare", "--seeds", "0"], "argument --seeds: must be an integer in [1, 10000], got 0"),
        (["compare", "--seeds", "99999999999999999999"], "argument --seeds: must be an integer in [1, 10000]"),
        (["compare", "--seeds", "2.5"], "argument --seeds: expected an integer in [1, 10000], got '2.5'"),
        (["compare", "--target-acc", "0"], "argument --target-acc: must be an accuracy in (0, 1] or a percentage in (1, 100], got '0'"),
        (["compare", "--target-acc", "101"], "argument --target-acc: must be an accuracy in (0, 1]"),
        (["compare", "--target-acc", "-5"], "argument --target-acc: must be an accuracy in (0, 1]"),
        (["compare", "--target-acc", "1e400"], "argument --target-acc: must be a finite number, got '1e400'"),
        (["tune", "--param", "T=1:2", "--trials", "0"], "argument --trials: must be an integer in [1, 2147483647], got 0"),
        (["tune", "--param", "T=1:2", "--trials", "inf"], "argument --trials: expected an integer"),
        (["train-student", "--epochs", "nan"], "argument --epochs: invalid int value: 'nan'"),
    ],
)
def test_command_options_out_of_range(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("text,fraction", [("95", 0.95), ("0.95", 0.95), ("1", 1.0), ("100", 1.0), ("1e-3", 0.001)])
def test_target_acc_accepts_fractions_and_percentages(text, fraction):
    from kdlab.cli import build_parser

    args = build_parser().parse_args(["compare", "--target-acc", text])
    assert args.target_acc == pytest.approx(fraction)


def test_float_flag_in_scientific_notation_reaches_the_recipe():
    """--lr 1e-5 becomes the override text 'lr=1e-05', which YAML 1.1 would read as a string."""
    from kdlab.cli import build_parser
    from kdlab.cli_recipe import recipe_overrides
    from kdlab.recipes import load_recipe

    args = build_parser().parse_args(["train-student", "digits-mlp", "--lr", "1e-5"])
    assert load_recipe("digits-mlp", recipe_overrides(args, "student")).student.train.optimizer.lr == 1e-5


def test_command_errors_point_at_the_subcommand_help(capsys):
    assert main(["recipes", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlab: error: unknown recipe 'no-such-recipe'") and err.endswith("(see `kdlab recipes --help`)\n")
    with pytest.raises(SystemExit):
        main(["recipes", "--bogus"])
    assert capsys.readouterr().err.endswith("(see `kdlab recipes --help`)\n")


@pytest.mark.parametrize(
    "command,unbuffered", [(["recipes"], ""), (["recipes"], "1"), (["losses"], ""), (["recipes", "mnist-mlp"], "1")]
)
def test_closed_stdout_ends_quietly(command, unbuffered):
    """`kdlab recipes | head -1`: a reader that has gone away is not an error worth a traceback.

    The read end is closed before the process starts, so every write fails (deterministic); with
    PYTHONUNBUFFERED the failure comes from print(), without it from the final flush at exit.
    """
    import os

    from tests.catalogue.harness import SRC

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = SRC
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocesses.run([sys.executable, "-m", "kdlab", *command], stdout=write, stderr=subprocess.PIPE, text=True,
                                env=env)
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, what the shell reports for git or cat in the same spot


def test_a_reader_that_leaves_after_output_fitting_the_pipe_sees_exit_0():
    """`kdlab recipes | head -1` as the README states it: the listing reaches the pipe in one write before
    the reader closes it, so nothing failed and the status is 0 (git and cat behave alike)."""
    import os

    from tests.catalogue.harness import SRC

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered: one write at exit
    env["PYTHONPATH"] = SRC
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "recipes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    first = proc.stdout.readline()  # arrives only with the whole listing
    proc.stdout.close()  # what head -1 does next
    _, err = subprocesses.communicate(proc)
    assert proc.returncode == 0 and err == ""
    from kdlab.recipes import bundled_recipes

    assert first == bundled_recipes()[0] + "\n"  # the first name of the sorted listing


# --- run folders, resume, progress, file-system errors (issue 9, parts 1, 3, 4, 5, 10) ------------

TINY = ["train-student", "digits-mlp", "--set", "student.model.hidden=[8]"]


def _metrics(folder):
    import json

    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_existing_run_is_refused_and_overwrite_moves_it_aside(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*TINY, "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    first = (run / "last.pt").read_bytes()
    capsys.readouterr()
    assert main([*TINY, "--epochs", "2", "--no-progress", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert main([*TINY, "--epochs", "2", "--no-progress", "--out", str(run), "--overwrite"]) == 0
    err = capsys.readouterr().err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.replaced-")]
    assert len(aside) == 1 and str(aside[0]) in err
    assert (aside[0] / "last.pt").read_bytes() == first and [m["epoch"] for m in _metrics(aside[0])] == [1]
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]
    (tmp_path / "empty").mkdir()
    assert main([*TINY, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "empty")]) == 0  # an empty folder is fine


def test_resume_uses_the_runs_own_epochs_and_more_epochs_extend_it(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*TINY, "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    assert main(["train-student", "--out", str(run), "--resume", "--no-progress"]) == 0  # not the recipe's 100
    assert [m["epoch"] for m in _metrics(run)] == [1]
    assert main(["train-student", "digits-mlp", "--set", "student.model.hidden=[8]", "--out", str(run), "--resume",
                 "--epochs", "3", "--data-dir", str(tmp_path), "--no-download", "--progress"]) == 0
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]


def test_distill_resume_takes_the_recorded_teacher(tmp_path, capsys):
    assert main(["train-teacher", "digits-mlp", "--set", "teacher.model.hidden=[16]", "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "t")]) == 0
    teacher = tmp_path / "t" / "best.pt"
    args = ["distill", "digits-mlp", "--set", "student.model.hidden=[8]", "--no-progress", "--out", str(tmp_path / "s")]
    assert main([*args, "--epochs", "1", "--teacher", str(teacher)]) == 0
    assert main(["distill", "--out", str(tmp_path / "s"), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert main(["distill", "--out", str(tmp_path / "s"), "--resume", "--epochs", "3", "--no-progress", "--teacher", str(teacher)]) == 0
    assert [m["epoch"] for m in _metrics(tmp_path / "s")] == [1, 2, 3]


def test_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main([*TINY, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("scratch epoch 1/2: loss ") and "test acc" in lines[1]
    assert main([*TINY, "--epochs", "2", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_non_finite_loss_is_one_line_exit_2_and_no_checkpoint(tmp_path, capsys):
    code = main([*TINY, "--epochs", "2", "--out", str(tmp_path / "r"), "--set", "student.train.optimizer.lr=1.0e+30"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("kdlab: error: training diverged: the hard loss is nan at epoch 1, step 2 of 12")
    assert not list((tmp_path / "r").glob("*.pt")) and not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("victim", ["last.pt", "metrics.jsonl"])
def test_disk_full_mid_run_is_one_line_and_the_run_resumes_to_the_same_metrics(tmp_path, capsys, monkeypatch, victim):
    import errno
    import os

    args = [*TINY, "--epochs", "3", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    real_fsync, seen = os.fsync, []

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{victim}."):
            seen.append(fd)
            if len(seen) == 2:  # the second epoch's write
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "r"
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {run / victim}: disk full" in err
    monkeypatch.undo()
    assert not list(run.glob(".*.tmp"))
    assert main(["train-student", "--out", str(run), "--resume", "--no-progress"]) == 0
    timing = {"train_seconds", "eval_seconds", "seconds"}
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    assert strip(_metrics(run)) == strip(_metrics(tmp_path / "ref"))


USER_MODULE = '''
import torch
from torch import nn
from kdlab.models import MODELS
from kdlab.methods import KD, register_method


class Tiny(nn.Module):
    def __init__(self, in_shape, num_classes, width=6):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


@MODELS.register("user-tiny")
def user_tiny(in_shape, num_classes, width: int = 6):
    return Tiny(in_shape, num_classes, width)


@register_method("user-kd")
def build_user_kd(params, distill):
    """a user's own method: Hinton KD under another name"""
    return KD(distill.loss, distill.temperature, distill.hard_weight, distill.soft_weight)
'''


def test_user_registered_models_and_methods_work_from_the_cli(tmp_path):
    (tmp_path / "mykd.py").write_text(USER_MODULE)
    flags = ["--import", "mykd", "--set", "student.model={name: user-tiny, width: 5}", "--set", "teacher.model={name: user-tiny}",
             "--set", "distill.method=user-kd", "--teacher-epochs", "1", "--epochs", "1", "--no-progress",
             "--teacher-cache", str(tmp_path / "cache")]
    proc = run_cli("distill", "digits-mlp", *flags, "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "imports:\n- mykd" in config and "method: user-kd" in config and "name: user-tiny" in config
    bad = run_cli("train-student", "digits-mlp", "--import", "no_such_mod", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot import 'no_such_mod'" in bad.stderr


# --- feedback and consistency on long runs -------------------------------------------------------


def test_teacher_training_is_announced_on_stderr_before_it_starts(tmp_path, capsys, digits):
    """A cold teacher cache: one line says why a teacher is trained and how much work it is, before its first epoch."""
    from kdlab.recipes import load_recipe

    cache = tmp_path / "cache"
    args = ["distill", "digits-mlp", "--teacher-cache", str(cache), "--set", "teacher.model.hidden=[16]",
            "--set", "student.model.hidden=[8]", "--teacher-epochs", "2", "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().err.splitlines()
    batch = load_recipe("digits-mlp").teacher.train.batch_size
    steps = -(-len(digits.train) // batch)
    assert lines[0].startswith("kdlab: teacher mlp for digits (seed 0) is not in the teacher cache ")
    assert f"(no --teacher given); training it first: 2 epochs of {steps} steps (batch {batch})" in lines[0]
    assert lines[1].startswith("teacher epoch 1/2: ")  # the announcement comes first
    assert main([*args, "--out", str(tmp_path / "b"), "--no-progress"]) == 0  # now cached: nothing to announce
    assert "not in the teacher cache" not in capsys.readouterr().err


def test_resumed_teacher_training_is_announced_with_the_epochs_left(tmp_path, digits):
    from kdlab.recipes import load_recipe
    from kdlab.teacher_cache import announce_training

    recipe = load_recipe("digits-mlp", ["teacher.train.epochs=5"])
    line = announce_training(recipe, digits, tmp_path, 2, progress=False)
    steps = -(-len(digits.train) // recipe.teacher.train.batch_size)
    assert line == (f"kdlab: resuming the interrupted training of teacher mlp for digits (seed 0) in the teacher cache "
                    f"{tmp_path} at epoch 2/5: 3 epochs of {steps} steps (batch {recipe.teacher.train.batch_size})")


TRAINING_COMMANDS = {"train-teacher": "teacher", "train-student": "student", "distill": "student", "demo": "student",
                     "compare": "student", "tune": "student"}


@pytest.mark.parametrize("command,role", TRAINING_COMMANDS.items())
def test_every_training_command_takes_the_same_flag_names(command, role, capsys):
    """--epochs / --batch-size / --lr set the same role's train values everywhere (the README's list of short forms)."""
    from kdlab.cli import build_parser
    from kdlab.cli_recipe import recipe_from_args

    extra = ["--param", "T=1:4"] if command == "tune" else []
    args = build_parser().parse_args([command, "digits-mlp", "--epochs", "3", "--batch-size", "32", "--lr", "0.02",
                                      "--seed", "4", "--dataset", "digits", "--data-dir", "d", *extra])
    recipe = recipe_from_args(args, role if command in ("train-teacher", "train-student", "distill") else None)
    train = getattr(recipe, role).train
    assert (train.epochs, train.batch_size, train.optimizer.lr, recipe.seed) == (3, 32, 0.02, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--epochs N, --student-epochs N student training epochs" in help_text if command in ("demo", "compare", "tune") \
        else f"--epochs EPOCHS {role} training epochs" in help_text
    if command in ("distill", "demo", "compare"):
        for flag in ("-T", "--hard-weight", "--soft-weight"):
            assert f"{flag} " in help_text
    if command in ("distill", "demo"):
        assert "--loss LOSS" in help_text


@pytest.mark.parametrize("command", ["demo", "compare", "tune"])
def test_student_epochs_is_still_accepted_as_another_name_for_epochs(command):
    from kdlab.cli import build_parser
    from kdlab.cli_recipe import recipe_from_args

    extra = ["--param", "T=1:4"] if command == "tune" else []
    args = build_parser().parse_args([command, "digits-mlp", "--student-epochs", "2", "--teacher-epochs", "5", *extra])
    recipe = recipe_from_args(args, None)
    assert (recipe.student.train.epochs, recipe.teacher.train.epochs) == (2, 5)


def test_listing_commands_take_import_and_list_what_it_registers(tmp_path):
    """methods, losses and recipes accept --import (a user could not list what they registered), export too."""
    (tmp_path / "mykd.py").write_text(USER_MODULE + '''

from kdlab.losses import SOFT_LOSSES


@SOFT_LOSSES.register("user-soft")
def user_soft(student_logits, teacher_logits, T):
    """a user's own soft loss"""
    return (student_logits - teacher_logits).pow(2).mean()
''')
    methods = run_cli("methods", "--import", "mykd", cwd=tmp_path)
    assert methods.returncode == 0, methods.stderr
    assert any(line.split()[0] == "user-kd" and "a user's own method" in line for line in methods.stdout.splitlines())
    losses = run_cli("losses", "--import", "mykd", cwd=tmp_path)
    assert losses.returncode == 0 and any(line.startswith("user-soft ") for line in losses.stdout.splitlines()), losses.stderr
    recipe = run_cli("recipes", "digits-mlp", "--import", "mykd", "--set", "distill.loss=user-soft",
                     "--set", "student.model={name: user-tiny}", cwd=tmp_path)
    assert recipe.returncode == 0, recipe.stderr
    assert "imports:\n- mykd" in recipe.stdout and "loss: user-soft" in recipe.stdout
    assert run_cli("recipes", "--import", "mykd", cwd=tmp_path).stdout.split() == run_cli("recipes").stdout.split()
    run = run_cli("train-student", "digits-mlp", "--import", "mykd", "--set", "student.model={name: user-tiny}",
                  "--epochs", "1", "--no-progress", "--out", "run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    export = run_cli("export", "run", "--torchscript", "s.pt", "--import", "mykd", cwd=tmp_path)
    assert export.returncode == 0 and (tmp_path / "s.pt").is_file(), export.stderr
    bad = run_cli("losses", "--import", "no_such_mod", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot import 'no_such_mod'" in bad.stderr


DATASET_MODULE = '''
import torch
from torch.utils.data import Dataset
from kdlab.data import DATASETS


@DATASETS.register("user-blobs")
class Blobs(Dataset):
    def __init__(self, root, train=True, download=False):
        g = torch.Generator().manual_seed(0 if train else 1)
        self.y = torch.randint(0, 3, (60 if train else 30,), generator=g)
        self.x = torch.rand(len(self.y), 6, 6, generator=g) * 0.2 + self.y[:, None, None] * 0.3

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])
'''


def test_a_user_dataset_class_trains_from_the_cli_and_a_bad_one_is_one_line(tmp_path):
    (tmp_path / "blobs.py").write_text(DATASET_MODULE)
    proc = run_cli("train-student", "digits-mlp", "--import", "blobs", "--dataset", "user-blobs", "--epochs", "2",
                   "--set", "student.model.hidden=[8]", "--no-progress", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["dataset"] == "user-blobs" and info["data_source"] == "blobs.Blobs"
    (tmp_path / "badblobs.py").write_text(DATASET_MODULE.replace("root, train=True, download=False", "path, mode"))
    bad = run_cli("train-student", "digits-mlp", "--import", "badblobs", "--dataset", "user-blobs", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "cannot build the train and test splits of Blobs(path, mode)" in bad.stderr and "train=True/False" in bad.stderr


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*TINY, "--epochs", "2", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    last, metrics = (run / "last.pt").read_bytes(), _metrics(run)
    assert main(["train-student", "--out", str(run), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == (f"run folder {run} already finished 2/2 epochs; nothing to resume "
                                    "(pass --epochs 3 or more to train it further)")
    assert err == "" and (run / "last.pt").read_bytes() == last and _metrics(run) == metrics  # no epoch trained
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics[:1]) + "\n")  # killed before its last line
    assert main(["train-student", "--out", str(run), "--resume"]) == 0  # still repaired from last.pt, then said
    assert _metrics(run) == metrics and "nothing to resume" in capsys.readouterr().out
    assert main(["train-student", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
