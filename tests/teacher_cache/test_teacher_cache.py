import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from kdlab.recipes import load_recipe
from kdlab.data import DATASETS, RawData
from kdlab.data.digits import load_digits
from kdlab.pipeline import load_teacher, prepare_data, run_teacher
from kdlab.teacher_cache import cached_teacher, teacher_cache_path
from tests.catalogue.harness import SRC
from tests import subprocesses

FAST = ["teacher.model.hidden=[16]", "teacher.train.epochs=1", "student.train.epochs=1"]


def _cached(recipe, cache, data=None):
    return cached_teacher(recipe, data or prepare_data(recipe), cache, progress=False, train=run_teacher, load=load_teacher)


def test_key_covers_the_data_content(tmp_path, monkeypatch):
    """Same dataset name, one changed pixel: a new entry, never the teacher of the old images."""
    changed = {"on": False}

    def loader(data_dir=None, download=False) -> RawData:
        raw = load_digits()
        if changed["on"]:
            raw.train_x[0, 0, 0] = 1.0 - raw.train_x[0, 0, 0]
        return raw

    monkeypatch.setitem(DATASETS._items, "mutable-digits", loader)
    recipe = load_recipe("digits-mlp", FAST + ["dataset.name=mutable-digits"])
    first = _cached(recipe, tmp_path)
    assert not first.hit and _cached(recipe, tmp_path).hit
    changed["on"] = True
    after = _cached(recipe, tmp_path)
    assert not after.hit and after.path != first.path


def test_foreign_or_swapped_checkpoint_is_retrained_never_reused(tmp_path):
    small = load_recipe("digits-mlp", FAST)
    other_seed = load_recipe("digits-mlp", FAST + ["seed=1"])  # same model spec, other weights
    bigger = load_recipe("digits-mlp", FAST + ["teacher.model.hidden=[24]"])
    for r in (small, other_seed, bigger):
        _cached(r, tmp_path)
    src = teacher_cache_path(small, tmp_path) / "last.pt"
    for victim in (other_seed, bigger):
        entry = teacher_cache_path(victim, tmp_path)
        shutil.copy(src, entry / "last.pt")  # a checkpoint that is not this entry's teacher
        again = _cached(victim, tmp_path)
        assert not again.hit, "a foreign checkpoint was reused"
        assert _cached(victim, tmp_path).hit
        assert list(tmp_path.glob(entry.name + ".rejected-*"))  # moved aside, not deleted
    # a checkpoint copied into an empty entry (no key.json) is not trusted either
    fresh = load_recipe("digits-mlp", FAST + ["seed=2"])
    entry = teacher_cache_path(fresh, tmp_path)
    entry.mkdir()
    shutil.copy(src, entry / "last.pt")
    assert not _cached(fresh, tmp_path).hit


SCRIPT = """
import json, sys
from kdlab.recipes import load_recipe
from kdlab.pipeline import load_teacher, prepare_data, run_teacher
from kdlab.teacher_cache import cached_teacher
recipe = load_recipe("digits-mlp", sys.argv[2:])
c = cached_teacher(recipe, prepare_data(recipe), sys.argv[1], progress=False, log=lambda m: print(m, flush=True),
                   train=run_teacher, load=load_teacher)
print(json.dumps({"hit": c.hit, "waited": c.waited, "acc": c.test_acc, "path": str(c.path)}), flush=True)
"""


def test_concurrent_runs_wait_for_the_training_process(tmp_path):
    """While the entry is locked both workers wait; then one trains, the other reuses its teacher."""
    recipe = load_recipe("digits-mlp", FAST)
    entry = teacher_cache_path(recipe, tmp_path)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    fd = os.open(entry.with_name(entry.name + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # this test plays a third process holding the entry
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), *FAST], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:
            assert "waiting for process" in p.stdout.readline()
    finally:
        os.close(fd)
    results = []
    for p in procs:
        out, err = subprocesses.communicate(p)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["hit"] for r in results) == [False, True]  # trained once, reused once
    assert all(r["waited"] for r in results)
    assert results[0]["acc"] == results[1]["acc"] and results[0]["path"] == results[1]["path"] == str(entry)
    assert _cached(recipe, tmp_path).test_acc == results[0]["acc"]


def test_unusable_cache_is_one_line(tmp_path):
    from kdlab import KDLabError

    (tmp_path / "file").write_text("x")
    recipe = load_recipe("digits-mlp", FAST)
    with pytest.raises(KDLabError, match="teacher cache .* lies under .* which is a file"):
        _cached(recipe, tmp_path / "file" / "cache")


def test_distill_without_teacher_uses_the_cache(tmp_path, capsys):
    from kdlab.cli import main

    args = ["distill", "digits-mlp", "--teacher-epochs", "1", "--epochs", "1", "--set", "teacher.model.hidden=[16]",
            "--teacher-cache", str(tmp_path / "cache"), "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().out
    assert "teacher: trained and cached at" in first and "teacher: reused from the cache at" in second
    acc = lambda text: text.split("test acc ")[1].split("%")[0]  # noqa: E731
    assert acc(first) == acc(second)
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["teacher_reused"] is True and info["teacher_cache"].startswith(str(tmp_path / "cache"))
    assert not (tmp_path / "a" / "teacher").exists()  # the teacher lives in the cache, not in every run folder


def test_key_holds_what_precision_auto_resolves_to_here(tmp_path, monkeypatch):
    """``auto`` trains in bf16 on an AMX/AVX-512-BF16 machine and in fp32 elsewhere: the key holds
    the resolved precision, so an fp32 run and an ``auto`` run on a machine without bf16 share an
    entry, and a bf16 teacher is never taken for an fp32 one."""
    import kdlab.device as device

    data = prepare_data(load_recipe("digits-mlp"))
    path = {p: teacher_cache_path(load_recipe("digits-mlp", [f"teacher.train.precision={p}"]), tmp_path, data)
            for p in ("fp32", "bf16")}
    assert path["fp32"] != path["bf16"]
    for native, resolved in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "cpu_info", lambda native=native: {"bf16_native": native})
        auto = load_recipe("digits-mlp", ["teacher.train.precision=auto"])
        assert teacher_cache_path(auto, tmp_path, data) == path[resolved]


def test_keys_of_teachers_without_the_later_settings_are_unchanged(tmp_path):
    """teacher.augment and train.max_norm left at their defaults are absent from the key (entries
    cached before they existed stay valid); set, they make another entry."""
    from kdlab.teacher_cache import teacher_key

    data = prepare_data(load_recipe("digits-mlp"))
    key = teacher_key(load_recipe("digits-mlp"), data)
    assert "augment" not in key["teacher"] and "max_norm" not in key["teacher"]["train"]
    base = teacher_cache_path(load_recipe("digits-mlp"), tmp_path, data)
    for extra in ("teacher.augment={crop: 2}", "teacher.train.max_norm=15"):
        assert teacher_cache_path(load_recipe("digits-mlp", [extra]), tmp_path, data) != base


def test_key_holds_what_channels_last_auto_resolves_to_here(tmp_path):
    """``channels_last: auto`` (the default) is the standard layout for a teacher without
    convolutions: its key is the key of ``false`` (entries cached before ``auto`` existed stay
    valid); a convolutional teacher on a CPU resolves to channels_last and shares ``true``'s entry."""
    from kdlab.teacher_cache import teacher_key

    data = prepare_data(load_recipe("digits-mlp"))
    key = teacher_key(load_recipe("digits-mlp"), data)
    assert "channels_last" not in key["teacher"]["train"]
    path = {v: teacher_cache_path(load_recipe("digits-mlp", [f"teacher.train.channels_last={v}"]), tmp_path, data)
            for v in ("auto", "false", "true")}
    assert path["auto"] == path["false"] != path["true"]
    cnn = "teacher.model={name: cnn, channels: [4, 8]}"
    conv = {v: teacher_cache_path(load_recipe("digits-mlp", [cnn, f"teacher.train.channels_last={v}"]), tmp_path, data)
            for v in ("auto", "false", "true")}
    assert conv["auto"] == conv["true"] != conv["false"]
