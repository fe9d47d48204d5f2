"""Run folders: never reused silently, resumed with their own config, repaired after a kill."""

from __future__ import annotations

import errno
import json
import os

import pytest

from kdlab import CheckpointError, ConfigError, KDLabError
from kdlab.recipes import dump_recipe, load_recipe
from kdlab.resume import mutable_on_resume, resume_recipe
from kdlab.train.rundir import RunDir, check_new_run_folder, epochs_done, move_aside, read_metrics, run_files
from kdlab.utils import WriteError, atomic_write, atomic_write_text, remove_stale_temp_files


def make_run(folder, overrides=()):
    recipe = load_recipe("digits-mlp", list(overrides))
    run = RunDir(folder)
    run.write_config(dump_recipe(recipe))
    return run


def test_new_run_folder_accepts_missing_empty_or_runless_folders_and_refuses_a_run(tmp_path):
    assert check_new_run_folder(tmp_path / "new") == tmp_path / "new" and not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    check_new_run_folder(tmp_path / "empty")
    for name in ("config.yaml", "run.json", "metrics.jsonl", "best.pt"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("x")
        assert run_files(folder) == [name]
        with pytest.raises(KDLabError, match=r"already holds a run .*--resume to continue it, --overwrite"):
            check_new_run_folder(folder)


@pytest.mark.parametrize("where,needle", [("file", "is a file"), ("under-file", "lies under"), ("proc", "not writable")])
def test_new_run_folder_that_cannot_be_a_folder_is_one_clear_error(tmp_path, where, needle):
    (tmp_path / "f").write_text("x")
    path = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "run", "proc": "/proc/kdlab-run"}[where]
    with pytest.raises(KDLabError, match=needle):
        check_new_run_folder(path)


def test_move_aside_renames_and_never_collides(tmp_path):
    run = make_run(tmp_path / "run")
    first = move_aside(run.path)
    make_run(tmp_path / "run")
    second = move_aside(tmp_path / "run")
    assert first != second and not (tmp_path / "run").exists()
    assert first.name.startswith("run.replaced-") and (first / "config.yaml").is_file() and (second / "config.yaml").is_file()


def test_resume_recipe_is_the_runs_own_and_lists_every_difference(tmp_path):
    run = make_run(tmp_path / "run", ["student.train.epochs=2", "seed=3"])
    same = resume_recipe(run.path, "student")
    assert same.student.train.epochs == 2 and same.seed == 3
    # the bundled recipe's own epochs (100) and seed (0) are not requests: seed differs -> refused
    with pytest.raises(ConfigError) as info:
        resume_recipe(run.path, "student", "digits-mlp", ["student.train.optimizer.lr=0.05"])
    msg = str(info.value)
    assert "seed: run has 3, command line gives 0" in msg
    assert "student.train.optimizer.lr: run has 0.01, command line gives 0.05" in msg
    assert "student.train.epochs" not in msg.split(". A resumed")[0]
    assert ", ".join(mutable_on_resume("student")) in msg
    # with the same recipe and seed the recipe file's epochs are ignored; explicit ones extend
    kept = resume_recipe(run.path, "student", "digits-mlp", ["seed=3", "student.train.epochs=2"])
    assert kept.student.train.epochs == 2
    assert resume_recipe(run.path, "student", None, ["student.train.epochs=5"]).student.train.epochs == 5
    moved = resume_recipe(run.path, "student", None, ['dataset.data_dir="/elsewhere"', "dataset.download=false"])
    assert moved.dataset.data_dir == "/elsewhere" and moved.dataset.download is False
    # the teacher's epochs are not the student run's to change; nor is the model
    with pytest.raises(ConfigError, match=r"teacher.train.epochs: run has 50, command line gives 3"):
        resume_recipe(run.path, "student", None, ["teacher.train.epochs=3"])
    with pytest.raises(ConfigError, match=r"student.model.dropout: run has 0.0, command line gives 0.1"):
        resume_recipe(run.path, "student", None, ["student.model.dropout=0.1"])


def test_sync_metrics_follows_the_checkpoint(tmp_path):
    run = make_run(tmp_path / "run")
    for e in (1, 2, 3):
        run.log_epoch({"epoch": e, "test_acc": e / 10})
    run.sync_metrics(2, {"epoch": 2, "test_acc": 0.2})  # a later epoch after the checkpoint is dropped
    assert [m["epoch"] for m in read_metrics(run.path)] == [1, 2]
    run.sync_metrics(3, {"epoch": 3, "test_acc": 0.33})  # checkpoint one ahead: its record is appended
    assert read_metrics(run.path)[-1] == {"epoch": 3, "test_acc": 0.33}
    before = (run.path / "metrics.jsonl").stat().st_mtime_ns
    run.sync_metrics(3, {"epoch": 3, "test_acc": 0.99})  # consistent: the logged record wins, nothing rewritten
    assert (run.path / "metrics.jsonl").stat().st_mtime_ns == before and read_metrics(run.path)[-1]["test_acc"] == 0.33
    run.sync_metrics(0, None)  # no checkpoint at all: the run starts over
    assert read_metrics(run.path) == []


def test_damaged_run_files_are_one_line_errors(tmp_path):
    run = make_run(tmp_path / "run")
    (run.path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    with pytest.raises(CheckpointError, match="metrics.jsonl line 2 is not valid JSON"):
        RunDir(run.path)
    (run.path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or not a kdlab checkpoint"):
        epochs_done(run.path)
    assert epochs_done(tmp_path) == 0


def test_remove_stale_temp_files_only_removes_atomic_write_leftovers(tmp_path):
    for name in (".last.pt.abc123.tmp", ".metrics.jsonl.x.tmp", "notes.tmp", "last.pt"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".last.pt.abc123.tmp", ".metrics.jsonl.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
def test_disk_full_during_a_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, fail_in):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, "old\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_in == "write":
        with pytest.raises(WriteError) as info:
            atomic_write(target, full)
    else:
        monkeypatch.setattr(os, fail_in, full)
        with pytest.raises(WriteError) as info:
            atomic_write_text(target, "new\n")
        monkeypatch.undo()
    assert isinstance(info.value, KDLabError) and isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"cannot write {target}: disk full;") and "\n" not in str(info.value)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_run_info_is_kept_and_resumes_are_appended(tmp_path):
    run = make_run(tmp_path / "run")
    run.write_run_info(0, "scratch", {"dataset": "digits"})
    started = json.loads((run.path / "run.json").read_text())
    run.write_run_info(0, "scratch", {"dataset": "other"}, resumed=True)
    info = json.loads((run.path / "run.json").read_text())
    assert info["started"] == started["started"] and info["dataset"] == "digits" and len(info["resumed"]) == 1
