"""Bad inputs to ``kdlab demo``: one stderr line, exit 2, nothing written (issue 9 parts 11-12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import check_bad_input

TINY = ["--set", "teacher.model.hidden=[16]", "--teacher-epochs", "1", "--student-epochs", "1", "--no-progress"]


def _used_folder(cwd: Path) -> str:
    (cwd / "used").mkdir()
    (cwd / "used" / "report.md").write_text("an earlier run\n")
    return "used"


@pytest.mark.parametrize(
    "make_out,extra,needles",
    [
        (None, ["--seeds", "1"], ["--seeds must be >= 2", "--seeds 20"]),
        (_used_folder, [], ["already exists and is not empty", "new --out"]),
    ],
    ids=["one-seed", "out-used"],
)
def test_demo_bad_input(tmp_path, make_out, extra, needles):
    args = ["demo", *TINY, *extra, "--teacher-cache", str(tmp_path / "cache")]
    if make_out is not None:
        args += ["--out", make_out(tmp_path)]
    check_bad_input(args, tmp_path, needles)
