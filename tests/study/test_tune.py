import json

import pytest

from kdlab import ConfigError
from tests import subprocesses
from kdlab.cli import main
from kdlab.recipes import load_recipe
from kdlab.study.tune import parse_param, tune, tune_report

FAST = ["teacher.model.hidden=[16]", "teacher.train.epochs=1", "student.train.epochs=2"]


def _quiet(*_):
    pass


def test_param_specs():
    p = parse_param("T=1:10")
    assert (p.key, p.low, p.high, p.log) == ("distill.temperature", 1.0, 10.0, False)
    assert p.grid(4) == [1.0, 4.0, 7.0, 10.0]
    assert parse_param("lr=1e-4:1e-2:log").grid(3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert parse_param("distill.loss=hinton,no-T2").choices == ["hinton", "no-T2"]
    for bad, msg in [("T", "NAME=LOW:HIGH"), ("T=5:1", "LOW must be < HIGH"), ("T=a:b", "numbers"), ("lr=0:1:log", "LOW > 0")]:
        with pytest.raises(ConfigError, match=msg):
            parse_param(bad)


def test_tune_uses_validation_split_resumes_and_reports(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    db = str(tmp_path / "s.db")
    kw = dict(storage=db, teacher_cache=tmp_path / "cache", progress=False, log=_quiet)
    first = tune(recipe, ["T=1:10", "soft_weight=0:1"], 3, "random", **kw)
    assert sum(r["state"] == "COMPLETE" for r in first.trials) == 3
    again = tune(recipe, ["T=1:10", "soft_weight=0:1"], 5, "random", **kw)  # resumes: 2 more, not 5
    done = [r for r in again.trials if r["state"] == "COMPLETE"]
    assert len(done) == 5 and [r["number"] for r in done[:3]] == [r["number"] for r in first.trials]
    assert again.best_value == max(r["val_acc"] for r in done)
    assert all(1 <= r["T"] <= 10 and 0 <= r["soft_weight"] <= 1 for r in done)

    # The objective is validation accuracy: retrain the best trial by hand and compare.
    from kdlab.recipes import apply_overrides, recipe_from_dict
    from kdlab.pipeline import distill_method, load_teacher, prepare_data, run_teacher, train_role
    from kdlab.teacher_cache import cached_teacher

    r = recipe_from_dict(apply_overrides(recipe.to_dict(), ["dataset.val_fraction=0.1",
                         f"distill.temperature={again.best_params['T']!r}", f"distill.soft_weight={again.best_params['soft_weight']!r}"]))
    data = prepare_data(r)
    logits = cached_teacher(r, data, tmp_path / "cache", train=run_teacher, load=load_teacher).teacher.logits_for(data.train.x)
    res = train_role(r, "student", "check", data, distill_method(r), out=False, progress=False, teacher_logits=logits)
    assert res.fit.final["val_acc"] == pytest.approx(again.best_value)

    out = tune_report(again, tmp_path / "rep")
    assert json.loads((out / "best.json").read_text())["best_val_acc"] == again.best_value
    assert (out / "val_acc_vs_T.png").read_bytes()[:4] == b"\x89PNG"
    assert "| trial | T | soft_weight |" in (out / "report.md").read_text()


def test_grid_sampler_covers_the_grid(tmp_path):
    recipe = load_recipe("digits-mlp", FAST + ["student.train.epochs=1"])
    res = tune(recipe, ["T=2:6"], 3, "grid", storage=str(tmp_path / "g.db"), grid_points=3,
               teacher_cache=tmp_path / "cache", progress=False, log=_quiet)
    assert sorted(r["T"] for r in res.trials) == [2.0, 4.0, 6.0]


def test_bad_keys_fail_before_training(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    with pytest.raises(ConfigError, match="distill.temprature"):
        tune(recipe, ["distill.temprature=1:3"], 2, storage=str(tmp_path / "x.db"), log=_quiet)
    with pytest.raises(ConfigError, match="distill.temperature: must be a finite number > 0"):
        tune(recipe, ["T=0:3"], 2, storage=str(tmp_path / "x.db"), log=_quiet)
    assert not (tmp_path / "cache").exists()


def test_cli_tune(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDLAB_TEACHER_CACHE", str(tmp_path / "cache"))
    args = ["tune", "digits-mlp", "--param", "T=1:5", "--trials", "2", "--sampler", "random", "--out", str(tmp_path / "t"),
            "--no-plots", "--teacher-epochs", "1", "--student-epochs", "1", "--set", "teacher.model.hidden=[16]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best: {'T':" in out and (tmp_path / "t" / "study.db").exists() and (tmp_path / "t" / "trials.csv").exists()
    assert main(["tune", "digits-mlp", "--param", "T=5:1", "--out", str(tmp_path / "bad")]) == 2
    assert "LOW must be < HIGH" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_changed_search_space_or_recipe_is_refused(tmp_path):
    recipe = load_recipe("digits-mlp", FAST + ["student.train.epochs=1", "student.model.hidden=[8]"])
    kw = dict(storage=str(tmp_path / "s.db"), teacher_cache=tmp_path / "cache", progress=False, log=_quiet)
    tune(recipe, ["T=1:10"], 1, "random", **kw)
    for params, sampler, r, needle in [
        (["T=1:5"], "random", recipe, "different search space"),
        (["T=1:10", "soft_weight=0:1"], "random", recipe, "different search space"),
        (["T=1:10"], "tpe", recipe, "different sampler"),
        (["T=1:10"], "random", load_recipe("digits-mlp", FAST + ["student.train.epochs=2", "student.model.hidden=[8]"]),
         "student.train.epochs: 1 vs 2"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            tune(r, params, 2, sampler, **kw)
    assert tune(recipe, ["T=1:10"], 2, "random", **kw).trials[-1]["state"] == "COMPLETE"  # same settings resume


def test_grid_points_below_one_refused(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    for points in (0, -3):
        with pytest.raises(ConfigError, match="--grid-points must be >= 1"):
            tune(recipe, ["T=1:3"], 2, "grid", storage=str(tmp_path / "g.db"), grid_points=points, log=_quiet)
    assert not (tmp_path / "g.db").exists()


def test_concurrent_workers_share_one_study_and_stop_at_n(tmp_path):
    """Two real workers started at the same moment on a fresh storage: both run, N trials in total."""
    import optuna
    import os
    import subprocess
    import sys

    from tests.catalogue.harness import SRC

    db = tmp_path / "shared.db"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "KDLAB_TEACHER_CACHE": str(tmp_path / "cache")}
    args = ["tune", "digits-mlp", "--param", "T=1:5", "--trials", "4", "--sampler", "random", "--storage", str(db),
            "--no-plots", "--no-progress", "--teacher-epochs", "1", "--student-epochs", "1",
            "--set", "teacher.model.hidden=[16]", "--set", "student.model.hidden=[8]"]
    procs = [subprocess.Popen([sys.executable, "-m", "kdlab", *args, "--out", str(tmp_path / f"w{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [subprocesses.communicate(p) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Error" not in err and "Traceback" not in err
    study = optuna.load_study(study_name="digits-mlp-tune", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states and "FAIL" not in states
    assert all("trials in " in out for out, _ in outs)


def test_a_diverging_trial_is_recorded_as_failed_and_does_not_count(tmp_path):
    """lr 1e30 makes training non-finite: that trial is FAIL, the study still reaches N completed."""
    from kdlab import KDLabError

    recipe = load_recipe("digits-mlp", FAST)
    kw = dict(teacher_cache=tmp_path / "cache", progress=False, log=_quiet)
    result = tune(recipe, ["lr=1.0e+30,0.001,0.002"], 2, "grid", storage=str(tmp_path / "a.db"), **kw)
    states = [(r["state"], r["lr"]) for r in result.trials]
    assert sum(s == "COMPLETE" for s, _ in states) == 2
    assert all(lr == 1e30 for s, lr in states if s == "FAIL") and all(lr < 1 for s, lr in states if s == "COMPLETE")
    with pytest.raises(KDLabError, match="every trial diverged"):
        tune(recipe, ["lr=1.0e+30,1.0e+31"], 1, "grid", storage=str(tmp_path / "b.db"), **kw)
