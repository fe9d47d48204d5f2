import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from kdlab.cli import main

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
        (["distill", "digits-mlp", "-T", "0"], "distill.temperature: must be > 0"),
        (["distill", "digits-mlp", "--soft-weight", "-1"], "distill.soft_weight: must be >= 0"),
        (["train-teacher", "digits-mlp", "--set", "teacher.train.epoch=1"], "teacher.train.epoch: unknown key"),
        (["train-teacher", "digits-mlp", "--set", "teacher.train.epochs=many"], "expected int, got 'many'"),
        (["train-student", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["train-teacher", "mnist-mlp", "--data-dir", "EMPTY", "--no-download"], "t10k-labels-idx1-ubyte.gz"),
        (["distill", "digits-mlp", "--teacher", "MISSING.pt"], "checkpoint MISSING.pt not found"),
        (["train-teacher", "--epochs", "x"], "argument --epochs: invalid int value"),
        (["frobnicate"], "invalid choice"),
        (["train-teacher", "--resume"], "--resume needs --out"),
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
    assert proc.stderr.strip().splitlines() == ["kdlab: error: distill.temperature: must be > 0, got -3.0"]


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


def test_recipes_command(capsys):
    assert main(["recipes"]) == 0
    assert "mnist-mlp" in capsys.readouterr().out
    assert main(["recipes", "mnist-cnn", "--set", "seed=4"]) == 0
    assert "seed: 4" in capsys.readouterr().out


def test_data_dir_with_quotes_and_backslashes_survives_the_override(tmp_path):
    from kdlab.cli import _overrides, build_parser
    from kdlab.config import load_recipe

    weird = str(tmp_path / "it's a \\ \"dir\"")
    args = build_parser().parse_args(["train-student", "mnist-mlp", "--data-dir", weird])
    assert load_recipe("mnist-mlp", _overrides(args, "student")).dataset.data_dir == weird


@pytest.mark.parametrize("command", ["compare", "tune", "doctor", "losses", "explain"])
def test_new_commands_have_help_without_format_leftovers(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "%%" not in out and "usage: kdlab " + command in out
