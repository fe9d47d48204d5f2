"""``kdlab reproduce hinton2015``: its recipes validate and share one teacher and student, a tiny run
of the whole protocol writes a judged report, and the verdict rule is the stated one."""

from __future__ import annotations

import json
import math

import pytest

from kdlab.cli import main
from kdlab.data.mnist_family import MNIST
from kdlab.pipeline import prepare_data, run_distill, run_student, run_teacher
from kdlab.recipes import load_recipe
from kdlab.study import hinton2015
from kdlab.study.reproduce import Row, judge, verdict
from kdlab.study.stats import prediction_interval
from tests.test_recipes import TINY, tiny_idx

RECIPES = list(hinton2015.RECIPES.values())
# tiny models and data: the protocol's code paths, not its numbers
SMALL = ["teacher.model.hidden=[16,16]", "student.model.hidden=[8,8]", "teacher.train.eval_batch_size=64",
         "student.train.eval_batch_size=64", "teacher.train.batch_size=16", "student.train.batch_size=16"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_trains_a_few_steps(name, monkeypatch, tmp_path):
    tiny_idx(monkeypatch, tmp_path / "data", MNIST, n_train=60, n_test=20)
    r = load_recipe(name, [*TINY, *SMALL, f"dataset.data_dir={tmp_path / 'data'}"])
    assert r.teacher.train.max_norm == 15.0 and r.teacher.model.params["input_dropout"] == 0.2
    assert r.distill.temperature == 20.0
    data = prepare_data(r)
    teacher = run_teacher(r, data, out=tmp_path / "t", progress=False)
    assert max(float(w.detach().norm(dim=1).max()) for w in hinton2015.linear_weights(teacher.model)) <= 15.0 + 1e-4
    if name == "hinton2015-mnist":
        run_student(r, data, out=tmp_path / "s", progress=False)
    result = run_distill(r, teacher.model, data, out=tmp_path / "d", progress=False)
    info = json.loads((tmp_path / "d" / "run.json").read_text())
    if name == "hinton2015-mnist":
        assert "transfer" not in info
    else:  # fake labels are 0..9 in turn: 6 of each class
        counts = info["transfer"]["class_counts"]
        assert counts == ([6, 6, 6, 0, 6, 6, 6, 6, 6, 6] if name.endswith("no3") else [0] * 7 + [6, 6, 0])
    assert len(result.fit.history) == 1


def test_recipes_share_the_teacher_student_and_data():
    rs = [load_recipe(n) for n in RECIPES]
    assert all((r.teacher, r.student, r.dataset, r.distill.temperature) == (rs[0].teacher, rs[0].student, rs[0].dataset, 20.0)
               for r in rs)
    assert rs[1].distill.transfer.exclude_classes == [3] and rs[2].distill.transfer.classes == [7, 8]
    assert rs[0].teacher.model.params["hidden"] == [1200, 1200] and rs[0].student.model.params["hidden"] == [800, 800]


def test_tiny_reproduction_writes_a_judged_report(monkeypatch, tmp_path, capsys):
    tiny_idx(monkeypatch, tmp_path / "data", MNIST, n_train=60, n_test=20)
    out = tmp_path / "rep"
    code = main(["reproduce", "hinton2015", "--seeds", "2", "--quick", "--out", str(out), "--data-dir", str(tmp_path / "data"),
                 "--no-download", "--teacher-cache", str(tmp_path / "cache"), "--no-progress",
                 *[x for o in SMALL for x in ("--set", o)]])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| teacher 1200-1200" in printed and "## Deviations from the paper" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1]
    rows = {r["key"]: r for r in res["rows"]}
    assert rows["teacher_errors"]["paper"] == 67 and len(rows["teacher_errors"]["values"]) == 2
    for p in res["per_seed"]:  # 20 test images: the error counts are counts of them
        assert 0 <= p["distilled"]["errors"] <= 20
        assert p["no3"]["focus_count"] == 2 and p["no3"]["transfer_examples"] == 54
        assert p["only78"]["classes"] == [7, 8] and p["only78"]["transfer_examples"] == 12
        assert p["no3"]["test_errors"] <= min(p["no3"]["errors"], p["no3"]["rule_errors"])  # the test-set optimum
    d = rows["distilled_minus_scratch"]
    assert d["values"] == [p["distilled"]["errors"] - p["scratch"]["errors"] for p in res["per_seed"]]
    assert (out / "report.md").read_text().startswith("# Hinton, Vinyals & Dean (2015)")
    assert (out / "seed-1" / "only78" / "run.json").is_file()
    # the same folder again is refused in one line
    assert main(["reproduce", "hinton2015", "--out", str(out), "--quick"]) == 2
    assert "already holds a reproduction" in capsys.readouterr().err


def test_verdict_uses_the_prediction_interval_of_one_run():
    values = [70.0, 74.0, 78.0]
    lo, hi = prediction_interval(values)
    # mean 74, s = 4, t(0.975, 2) = 4.303: half width 4.303 * 4 * sqrt(4/3)
    assert math.isclose(hi - 74.0, 4.302653 * 4.0 * math.sqrt(4.0 / 3.0), rel_tol=1e-5)
    assert verdict(Row("k", "x", 90.0, values)).startswith("reproduced")
    assert verdict(Row("k", "x", 100.0, values)) == "not reproduced: ours − paper = -26"
    assert verdict(Row("k", "x", 74.0, [70.0])).startswith("one seed")
    assert verdict(Row("k", "x", 3.5, values, kind="reference")) == "reference (not judged)"
    (row,) = judge([Row("k", "x", 90.0, values)])
    assert row.stats["mean"] == 74.0 and row.stats["prediction95"][0] == pytest.approx(lo)


def test_quick_with_epochs_and_unknown_names_are_one_line(capsys):
    assert main(["reproduce", "hinton2015", "--quick", "--epochs", "3"]) == 2
    assert "--quick sets the epochs itself" in capsys.readouterr().err
    assert main(["reproduce", "hinton2016"]) == 2
    assert "unknown reproduction 'hinton2016'; choose one of: hinton2015" in capsys.readouterr().err
