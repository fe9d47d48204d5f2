"""Bad-input catalogue, run folders (issue 9, parts 1 and 5): refused reuse, refused or failed resumes,
unusable --out locations. Every case: exit 2, one stderr line naming problem and fix, no file changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdlab.cli import main

from .harness import check_bad_input

TINY = ["--set", "student.model.hidden=[8]", "--no-progress"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A scratch run (2 epochs), a teacher run and a distill run (1 epoch each), trained once."""
    root = tmp_path_factory.mktemp("runs-template")
    assert main(["train-student", "digits-mlp", *TINY, "--epochs", "2", "--out", str(root / "run")]) == 0
    assert main(["train-teacher", "digits-mlp", "--set", "teacher.model.hidden=[16]", "--epochs", "1", "--no-progress",
                 "--out", str(root / "teacher")]) == 0
    assert main(["distill", "digits-mlp", *TINY, "--epochs", "1", "--teacher", str(root / "teacher" / "best.pt"),
                 "--out", str(root / "distill")]) == 0
    shutil.copy(root / "teacher" / "best.pt", root / "other.pt")
    (root / "empty").mkdir()
    (root / "afile").write_text("not a folder\n")
    return root


def _corrupt_last(case: Path) -> None:
    (case / "run" / "last.pt").write_bytes(b"PK\x03\x04 not a checkpoint")


def _foreign_last(case: Path) -> None:  # readable, but another model's: fails inside the trainer's restore
    shutil.copy(case / "teacher" / "last.pt", case / "run" / "last.pt")


def _damaged_metrics(case: Path) -> None:
    with open(case / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "loss\n')


def _changed_teacher(case: Path) -> None:
    info = json.loads((case / "distill" / "run.json").read_text())
    info["teacher_checkpoint"] = str(case / "teacher" / "best.pt")
    (case / "distill" / "run.json").write_text(json.dumps(info))
    with open(case / "teacher" / "best.pt", "ab") as fh:
        fh.write(b"\0")


CASES = {
    "existing-run": (["train-student", "digits-mlp", *TINY, "--out", "run"], ["already holds a run", "--resume", "--overwrite"], None),
    "resume-changed-lr": (["train-student", "--out", "run", "--resume", "--lr", "0.05"],
                          ["student.train.optimizer.lr: run has 0.01, command line gives 0.05", "student.train.epochs"], None),
    "resume-other-recipe": (["train-student", "mnist-mlp", "--out", "run", "--resume"], ["dataset.name: run has 'digits', command line gives 'mnist'"], None),
    "resume-fewer-epochs": (["train-student", "--out", "run", "--resume", "--epochs", "1"], ["already trained 2 epochs", "--epochs 2 or more"], None),
    "resume-no-run": (["train-student", "--out", "empty", "--resume"], ["holds no run to resume", "drop --resume"], None),
    "resume-and-overwrite": (["train-student", "--out", "run", "--resume", "--overwrite"], ["pass only one"], None),
    "resume-wrong-command": (["train-teacher", "--out", "run", "--resume"], ["is a scratch run", "kdlab train-student --resume"], None),
    "resume-corrupt-last": (["train-student", "--out", "run", "--resume"], ["corrupt or not a kdlab checkpoint"], _corrupt_last),
    "resume-foreign-last": (["train-student", "--out", "run", "--resume"], ["cannot resume this run"], _foreign_last),
    "resume-damaged-metrics": (["train-student", "--out", "run", "--resume"], ["metrics.jsonl line 3 is not valid JSON"], _damaged_metrics),
    "distill-other-teacher": (["distill", "--out", "distill", "--resume", "--teacher", "other.pt"], ["is not the teacher", "omit --teacher"], None),
    "distill-changed-teacher": (["distill", "--out", "distill", "--resume"], ["has changed since", "sha256"], _changed_teacher),
    "out-is-file": (["train-student", "digits-mlp", *TINY, "--out", "afile"], ["afile is a file"], None),
    "out-under-file": (["train-teacher", "digits-mlp", "--out", "afile/run"], ["lies under", "afile"], None),
    "out-under-proc": (["distill", "digits-mlp", "--out", "/proc/kdlab-run"], ["not writable"], None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_run_folder_bad_input(name, template, tmp_path):
    args, needles, prepare = CASES[name]
    case = tmp_path / "case"
    shutil.copytree(template, case)
    if prepare is not None:
        prepare(case)
    check_bad_input(args, case, needles)
