"""Bad-input catalogue: untrusted checkpoints, unusable teacher cache / tune storage / output folders.

Every case runs the real CLI and must end with exit 2, one stderr line naming the problem, and no
file created or changed; the location checks happen before any data is loaded or anything trained.
"""

from __future__ import annotations

import pytest
import torch

from tests.catalogue.harness import check_bad_input

FAST = ["--set", "teacher.model.hidden=[16]", "--teacher-epochs", "1", "--student-epochs", "1"]


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    torch.save({"format": "kdlab-checkpoint-v1", "x": Payload(str(tmp_path / "PWNED"))}, tmp_path / "evil.pt")
    return tmp_path


CASES = {
    "distill-evil-teacher": (["distill", "digits-mlp", "--teacher", "evil.pt", "--out", "run"],
                             ["contains Python objects that could run code", "evil.pt"]),
    "distill-teacher-with-teacher-epochs": (["distill", "digits-mlp", "--teacher", "evil.pt", "--teacher-epochs", "2"],
                                            ["--teacher-epochs"]),
    "distill-cache-under-file": (["distill", "digits-mlp", "--teacher-cache", "afile/cache", "--out", "run"],
                                 ["teacher cache", "which is a file"]),
    "compare-out-is-file": (["compare", "digits-mlp", "--out", "afile", *FAST], ["--out folder", "is a file"]),
    "compare-cache-is-file": (["compare", "digits-mlp", "--teacher-cache", "afile", "--out", "rep", *FAST],
                              ["teacher cache", "is a file"]),
    "tune-storage-is-folder": (["tune", "digits-mlp", "--param", "T=1:3", "--storage", ".", "--out", "t", *FAST],
                               ["tune storage", "is a folder"]),
    "tune-storage-under-file": (["tune", "digits-mlp", "--param", "T=1:3", "--storage", "afile/s.db", "--out", "t", *FAST],
                                ["tune storage folder", "afile is a file"]),
    "tune-out-under-file": (["tune", "digits-mlp", "--param", "T=1:3", "--out", "afile/t", *FAST], ["--out folder"]),
    "tune-grid-points-zero": (["tune", "digits-mlp", "--param", "T=1:3", "--sampler", "grid", "--grid-points", "0",
                               "--out", "t", *FAST], ["--grid-points must be >= 1"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_input(ws, name):
    args, needles = CASES[name]
    check_bad_input(args, ws, needles, env={"KDLAB_TEACHER_CACHE": str(ws / "cache")})
    assert not (ws / "PWNED").exists() and not (ws / "cache").exists()

