"""Bad-input catalogue, configuration side: recipe files, flags, ``--set`` overrides, numeric ranges.

Every case must end with exit code 2, one stderr line naming the problem (key and value), no
traceback and no file created or changed. Most cases run in-process through ``kdlab.cli.main``
(argument parsing and validation are the same code, without ~1 s of interpreter start-up each);
``SUBPROCESS_CASES`` runs a sample of them as real ``python -m kdlab`` processes so the exit code
and the stderr stream are also checked as a shell sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest

from kdlab.cli import main

from .harness import CliResult, assert_one_line_error, check_bad_input, snapshot

# file name -> content (bytes), or None for a folder; written into the scratch cwd before the run
Files = Dict[str, Optional[bytes]]


def _yaml(section_path: str, value: str) -> Files:
    """A recipe file setting one nested key, e.g. ``distill.temperature: .nan``."""
    *sections, key = section_path.split(".")
    lines = [f"{'  ' * i}{s}:" for i, s in enumerate(sections)] + [f"{'  ' * len(sections)}{key}: {value}"]
    return {"r.yaml": ("name: bad\n" + "\n".join(lines) + "\n").encode()}


TUNE = ["tune", "digits-mlp", "--param", "T=1:2"]

# (id, args, files, needles): needles must all appear in the one stderr line
CASES = [
    # non-finite numbers in a YAML recipe, one per numeric field, spread over the commands
    ("yaml-temperature-nan", ["distill", "r.yaml"], _yaml("distill.temperature", ".nan"),
     ["distill.temperature: must be a finite number > 0, got nan"]),
    ("yaml-temperature-inf", ["demo", "r.yaml"], _yaml("distill.temperature", ".inf"),
     ["distill.temperature: must be a finite number > 0, got inf"]),
    ("yaml-hard-weight-neg-inf", ["compare", "r.yaml"], _yaml("distill.hard_weight", "-.inf"),
     ["distill.hard_weight: must be a finite number >= 0, got -inf"]),
    ("yaml-soft-weight-nan", ["tune", "r.yaml", "--param", "T=1:2"], _yaml("distill.soft_weight", ".NaN"),
     ["distill.soft_weight: must be a finite number >= 0, got nan"]),
    ("yaml-weight-rate-inf", ["recipes", "r.yaml"], _yaml("distill.weight_schedule.rate", ".inf"),
     ["distill.weight_schedule.rate: must be a finite number >= 0, got inf"]),
    ("yaml-temperature-min-nan", ["distill", "r.yaml"], _yaml("distill.temperature_schedule.min", ".nan"),
     ["distill.temperature_schedule.min: must be a finite number > 0, got nan"]),
    ("yaml-temperature-step-inf", ["demo", "r.yaml"], _yaml("distill.temperature_schedule.step", ".inf"),
     ["distill.temperature_schedule.step: must be a finite number >= 0, got inf"]),
    ("yaml-val-fraction-nan", ["train-student", "r.yaml"], _yaml("dataset.val_fraction", ".nan"),
     ["dataset.val_fraction: must be a number in [0, 1), got nan"]),
    ("yaml-teacher-lr-inf", ["train-teacher", "r.yaml"], _yaml("teacher.train.optimizer.lr", ".inf"),
     ["teacher.train.optimizer.lr: must be a finite number > 0, got inf"]),
    ("yaml-student-lr-nan-string", ["train-student", "r.yaml"], _yaml("student.train.optimizer.lr", "nan"),
     ["student.train.optimizer.lr: must be a finite number > 0, got nan"]),
    ("yaml-weight-decay-inf", ["distill", "r.yaml"], _yaml("student.train.optimizer.weight_decay", ".inf"),
     ["student.train.optimizer.weight_decay: must be a finite number >= 0, got inf"]),
    ("yaml-momentum-nan", ["train-teacher", "r.yaml"], _yaml("teacher.train.optimizer.momentum", ".nan"),
     ["teacher.train.optimizer.momentum: must be a number in [0, 1), got nan"]),
    ("yaml-grad-clip-inf", ["train-student", "r.yaml"], _yaml("student.train.grad_clip", ".inf"),
     ["student.train.grad_clip: must be a finite number > 0, got inf"]),
    ("yaml-gamma-nan", ["train-teacher", "r.yaml"], _yaml("teacher.train.scheduler.gamma", ".nan"),
     ["teacher.train.scheduler.gamma: must be a finite number > 0, got nan"]),
    ("yaml-teacher-dropout-nan", ["train-teacher", "r.yaml"], _yaml("teacher.model.dropout", ".nan"),
     ["teacher.model.dropout: must be a number in [0, 1), got nan"]),
    ("yaml-student-dropout-inf", ["compare", "r.yaml"], _yaml("student.model.dropout", ".inf"),
     ["student.model.dropout: must be a number in [0, 1), got inf"]),
    # wrong types, unknown keys, wrong shapes
    ("yaml-epochs-word", ["train-teacher", "r.yaml"], _yaml("teacher.train.epochs", "ten"),
     ["teacher.train.epochs: expected int, got 'ten'"]),
    ("yaml-seed-float", ["recipes", "r.yaml"], {"r.yaml": b"seed: 1.5\n"}, ["seed: expected int, got 1.5"]),
    ("yaml-name-not-string", ["recipes", "r.yaml"], {"r.yaml": b"name: 123\n"}, ["name: expected str, got 123"]),
    ("yaml-name-with-slash", ["train-student", "r.yaml"], {"r.yaml": b"name: ../elsewhere\n"},
     ["name: must be a non-empty name usable in a folder name", "'../elsewhere'"]),
    ("yaml-list-for-mapping", ["train-student", "r.yaml"], {"r.yaml": b"dataset: [1, 2]\n"},
     ["dataset: expected a mapping of keys, got [1, 2]"]),
    ("yaml-model-as-string", ["distill", "r.yaml"], _yaml("teacher.model", "mlp"),
     ["teacher.model: expected a mapping of keys, got 'mlp'; write teacher.model.name: mlp"]),
    ("yaml-bool-word", ["train-teacher", "r.yaml"], _yaml("dataset.download", "maybe"),
     ["dataset.download: expected bool, got 'maybe'"]),
    ("yaml-unknown-top-key", ["distill", "r.yaml"], {"r.yaml": b"alpha: 0.5\n"}, ["alpha: unknown key; valid keys here:"]),
    ("yaml-typo-key", ["train-teacher", "r.yaml"], _yaml("teacher.train.epoch", "3"),
     ["teacher.train.epoch: unknown key; valid keys here: epochs"]),
    ("yaml-unknown-model-param", ["train-student", "r.yaml"], _yaml("student.model.width", "3"),
     ["student.model.width: unknown parameter for model 'mlp'"]),
    ("yaml-hidden-zero", ["demo", "r.yaml"], _yaml("student.model.hidden", "[20, 0]"),
     ["student.model.hidden: must be a non-empty list of integers in [1, 2147483647]", "[20, 0]"]),
    # the recipe file itself
    ("empty-file", ["train-teacher", "r.yaml"], {"r.yaml": b""}, ["recipe r.yaml is empty"]),
    ("comments-only-file", ["train-student", "r.yaml"], {"r.yaml": b"# todo\n"}, ["recipe r.yaml is empty"]),
    ("binary-file", ["distill", "r.yaml"], {"r.yaml": b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00"},
     ["recipe r.yaml is not a UTF-8 text file"]),
    ("recipe-is-a-folder", ["compare", "recipe.yaml"], {"recipe.yaml": None}, ["recipe recipe.yaml is a folder"]),
    ("top-level-list", ["demo", "r.yaml"], {"r.yaml": b"- 1\n- 2\n"}, ["recipe r.yaml: top level must be a mapping", "list"]),
    ("invalid-yaml", ["tune", "r.yaml", "--param", "T=1:2"], {"r.yaml": b"seed: [1,\n"}, ["recipe r.yaml: invalid YAML at line"]),
    ("duplicate-key", ["train-teacher", "r.yaml"], {"r.yaml": b"teacher:\n  train:\n    epochs: 1\nteacher:\n  model:\n    dropout: 0.1\n"},
     ["recipe r.yaml: key 'teacher' appears twice (lines 1 and 4); keep one"]),
    ("number-too-long", ["distill", "r.yaml"], {"r.yaml": b"seed: " + b"9" * 5000 + b"\n"},
     ["recipe r.yaml: a number has more than"]),
    ("missing-file", ["train-student", "missing.yaml"], {}, ["recipe file missing.yaml not found"]),
    ("unknown-bundled-name", ["recipes", "mnist-xl"], {}, ["unknown recipe 'mnist-xl'"]),
    # integers that would overflow torch, numpy or Optuna
    ("seed-overflow-flag", ["train-teacher", "digits-mlp", "--seed", "99999999999999999999"], {},
     ["seed: must be an integer in [0, 4294967295]", "99999999999999999999"]),
    ("seed-negative-flag", ["distill", "digits-mlp", "--seed", "-1"], {}, ["seed: must be an integer in [0, 4294967295]", "got -1"]),
    ("seed-overflow-yaml", ["recipes", "r.yaml"], {"r.yaml": b"seed: 18446744073709551616\n"},
     ["seed: must be an integer in [0, 4294967295]", "18446744073709551616"]),
    ("epochs-overflow", ["train-student", "digits-mlp", "--epochs", "2147483648"], {},
     ["student.train.epochs: must be an integer in [1, 2147483647], got 2147483648"]),
    ("batch-size-overflow", ["train-teacher", "digits-mlp", "--batch-size", "100000000000000000000"], {},
     ["teacher.train.batch_size: must be an integer in [1, 2147483647]"]),
    ("teacher-epochs-zero", ["demo", "--teacher-epochs", "0"], {}, ["teacher.train.epochs: must be an integer in [1, 2147483647], got 0"]),
    ("eval-batch-overflow", ["compare", "digits-mlp", "--set", "student.train.eval_batch_size=1099511627776"], {},
     ["student.train.eval_batch_size: must be an integer in [1, 2147483647]"]),
    ("step-size-overflow", ["train-teacher", "digits-mlp", "--set", "teacher.train.scheduler.step_size=99999999999"], {},
     ["teacher.train.scheduler.step_size: must be an integer in [1, 2147483647]"]),
    # flags
    ("flag-temperature-nan", ["distill", "digits-mlp", "-T", "nan"], {}, ["argument -T/--temperature: must be a finite number, got 'nan'"]),
    ("flag-lr-inf", ["train-student", "digits-mlp", "--lr", "inf"], {}, ["argument --lr: must be a finite number, got 'inf'"]),
    ("flag-val-fraction-one", ["train-teacher", "digits-mlp", "--val-fraction", "1"], {},
     ["dataset.val_fraction: must be a number in [0, 1), got 1.0"]),
    ("flag-soft-weight-neg-inf", ["demo", "--soft-weight=-inf"], {}, ["argument --soft-weight: must be a finite number, got '-inf'"]),
    ("flag-hard-weight-nan", ["compare", "digits-mlp", "--hard-weight", "NaN"], {}, ["argument --hard-weight: must be a finite number"]),
    ("flag-lr-zero", ["train-teacher", "digits-mlp", "--lr", "0"], {}, ["teacher.train.optimizer.lr: must be a finite number > 0, got 0.0"]),
    ("compare-seeds-zero", ["compare", "digits-mlp", "--seeds", "0"], {}, ["argument --seeds: must be an integer in [1, 10000], got 0"]),
    ("compare-target-acc-150", ["compare", "digits-mlp", "--target-acc", "150"], {},
     ["argument --target-acc: must be an accuracy in (0, 1] or a percentage in (1, 100], got '150'"]),
    ("compare-target-acc-nan", ["compare", "digits-mlp", "--target-acc", "nan"], {}, ["argument --target-acc: must be a finite number"]),
    ("tune-trials-zero", [*TUNE, "--trials", "0"], {}, ["argument --trials: must be an integer in [1, 2147483647], got 0"]),
    ("tune-param-inf", ["tune", "digits-mlp", "--param", "T=1:inf"], {}, ["--param 'T=1:inf': LOW and HIGH must be finite numbers"]),
    ("tune-param-nan", ["tune", "digits-mlp", "--param", "soft_weight=nan:1"], {}, ["LOW and HIGH must be finite numbers", "nan"]),
    ("tune-param-out-of-range", ["tune", "digits-mlp", "--param", "T=0:3"], {}, ["distill.temperature: must be a finite number > 0, got 0.0"]),
    ("epochs-not-int", ["train-student", "--epochs", "x"], {}, ["argument --epochs: invalid int value: 'x'"]),
    ("unknown-option", ["losses", "--bogus"], {}, ["unrecognized arguments: --bogus", "(see `kdlab losses --help`)"]),
    ("unknown-command", ["frobnicate"], {}, ["invalid choice: 'frobnicate'"]),
    # --set
    ("set-without-equals", ["train-teacher", "digits-mlp", "--set", "seed"], {}, ["override 'seed': expected KEY=VALUE"]),
    ("set-into-scalar", ["distill", "digits-mlp", "--set", "seed.x=1"], {}, ["override 'seed.x=1': seed is not a section"]),
    ("set-into-list", ["train-teacher", "digits-mlp", "--set", "teacher.model.hidden.0=5"], {},
     ["teacher.model.hidden is not a section"]),
    ("set-empty-key", ["recipes", "digits-mlp", "--set", "=3"], {}, ["override '=3': empty key"]),
    ("set-section-to-scalar", ["train-student", "digits-mlp", "--set", "student="], {},
     ["override 'student=': student is a section; set one of its keys"]),
    ("set-temperature-inf", ["demo", "--set", "distill.temperature=.inf"], {}, ["distill.temperature: must be a finite number > 0, got inf"]),
    ("set-soft-weight-nan-string", [*TUNE, "--set", "distill.soft_weight=nan"], {},
     ["distill.soft_weight: must be a finite number >= 0, got nan"]),
    ("set-momentum-one", ["train-teacher", "digits-mlp", "--set", "teacher.train.optimizer.momentum=1"], {},
     ["teacher.train.optimizer.momentum: must be a number in [0, 1), got 1.0"]),
    ("set-both-weights-zero", ["distill", "digits-mlp", "--hard-weight", "0", "--soft-weight", "0"], {},
     ["distill.hard_weight and distill.soft_weight are both 0"]),
]

# A sample run as real processes: the exit status and stderr as a shell sees them.
SUBPROCESS_CASES = {"empty-file", "binary-file", "flag-temperature-nan", "set-into-scalar", "tune-param-inf"}


def _params(subprocess: bool) -> list:
    return [pytest.param(*c, id=c[0]) for c in CASES if (c[0] in SUBPROCESS_CASES) == subprocess]


def _write(cwd: Path, files: Files) -> None:
    for name, content in files.items():
        if content is None:
            (cwd / name).mkdir()
        else:
            (cwd / name).write_bytes(content)


def _run_in_process(args: Sequence[str], capsys: pytest.CaptureFixture) -> CliResult:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def test_catalogue_is_large_and_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert SUBPROCESS_CASES <= set(ids)
    commands = {c[1][0] for c in CASES}
    assert {"train-teacher", "train-student", "distill", "demo", "compare", "tune", "recipes", "losses"} <= commands


@pytest.mark.parametrize("case_id,args,files,needles", _params(subprocess=False))
def test_bad_input_in_process(case_id, args, files, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDLAB_TEACHER_CACHE", str(tmp_path / "cache"))
    _write(tmp_path, files)
    before = snapshot(tmp_path)
    result = _run_in_process(args, capsys)
    assert_one_line_error(result, *needles)
    assert snapshot(tmp_path) == before, "a refused command must not create or change files"


@pytest.mark.parametrize("case_id,args,files,needles", _params(subprocess=True))
def test_bad_input_subprocess(case_id, args, files, needles, tmp_path):
    _write(tmp_path, files)
    check_bad_input(args, tmp_path, needles, env={"KDLAB_TEACHER_CACHE": str(tmp_path / "cache")})


def test_every_command_error_points_at_its_help(tmp_path, capsys, monkeypatch):
    """The hint names the subcommand, for argparse errors and for errors raised while running."""
    monkeypatch.chdir(tmp_path)
    for command in ("train-teacher", "train-student", "distill", "demo", "compare", "recipes"):
        result = _run_in_process([command, "no-such-recipe"] if command != "recipes" else [command, "nope"], capsys)
        assert_one_line_error(result, f"(see `kdlab {command} --help`)")
    assert_one_line_error(_run_in_process(["tune", "nope", "--param", "T=1:2"], capsys), "(see `kdlab tune --help`)")
