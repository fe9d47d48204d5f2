import csv
import json

import pytest
import torch

from kdlab import ConfigError
from kdlab.cli import main
from kdlab.features import PENULTIMATE
from kdlab.recipes import load_recipe
from kdlab.study.compare import compare, parse_variants
from kdlab.study.report import write_report
from kdlab.teacher_cache import teacher_cache_path

FAST = ["teacher.model.hidden=[32]", "teacher.train.epochs=2", "student.train.epochs=3"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    recipe = load_recipe("digits-mlp", FAST)
    cache = tmp_path_factory.mktemp("teachers")
    return compare(recipe, "hinton,softmax-input", 3, teacher_cache=cache, progress=False, log=lambda *_: None), cache


def test_variants_always_start_with_scratch_and_reject_unknown_losses():
    assert parse_variants("hinton, extra-T,hinton") == ["scratch", "hinton", "extra-T"]
    with pytest.raises(ConfigError, match="unknown loss 'hintom'"):
        parse_variants("hintom")
    with pytest.raises(ConfigError, match="empty"):
        parse_variants(" , ")


def test_fair_by_construction(result):
    res, _ = result
    assert res.variants == ["scratch", "hinton", "softmax-input"] and res.seeds == [0, 1, 2]
    assert res.mode == "batched"
    for s in res.seeds:  # same seed, same first-epoch hard-loss start point needs same init & batches:
        first = {v: res.run(v, s).step_losses[0, 1].item() for v in res.variants}
        assert max(first.values()) - min(first.values()) < 1e-5, first  # equal up to float rounding
    # different seeds differ
    assert res.run("hinton", 0).step_losses[0, 1] != res.run("hinton", 1).step_losses[0, 1]


def test_summary_statistics_follow_from_the_runs(result):
    res, _ = result
    s = res.summary("hinton")
    finals = [res.run("hinton", k).final_acc for k in res.seeds]
    assert s.final_acc.mean == pytest.approx(sum(finals) / 3)
    assert s.final_acc.ci_low < s.final_acc.mean < s.final_acc.ci_high
    assert res.summary("softmax-input").negative_loss_steps > 0  # the probability-input loss goes negative
    assert res.summary("hinton").negative_loss_steps == 0
    p = res.paired_vs_reference("softmax-input")
    diffs = [res.run("softmax-input", k).final_acc - res.run("hinton", k).final_acc for k in res.seeds]
    assert p.diff.mean == pytest.approx(sum(diffs) / 3)
    assert res.paired_vs_reference("hinton") is None
    assert res.target_acc == pytest.approx(res.summary("scratch").final_acc.mean)


def test_teacher_is_cached_and_reused(result):
    res, cache = result
    recipe = load_recipe("digits-mlp", FAST)
    assert res.teacher["path"] == str(teacher_cache_path(recipe, cache))
    again = compare(load_recipe("digits-mlp", FAST + ["student.train.epochs=1", "distill.temperature=5"]), "hinton", 1,
                    teacher_cache=cache, progress=False, log=lambda *_: None)
    assert again.teacher["reused"] and again.teacher["path"] == res.teacher["path"]
    other = load_recipe("digits-mlp", FAST + ["teacher.train.epochs=3"])
    assert teacher_cache_path(other, cache) != teacher_cache_path(recipe, cache)


def test_one_by_one_mode_gives_the_same_numbers(result):
    res, cache = result
    seq = compare(load_recipe("digits-mlp", FAST), "hinton,softmax-input", 3, teacher_cache=cache, batched=False,
                  progress=False, log=lambda *_: None)
    assert seq.mode == "one by one"
    for key, run in res.runs.items():
        assert seq.runs[key].final_acc == pytest.approx(run.final_acc, abs=1e-6)


def test_dropout_student_falls_back_to_one_by_one(tmp_path):
    recipe = load_recipe("digits-mlp", FAST + ["student.model.dropout=0.1", "student.train.epochs=1"])
    res = compare(recipe, "hinton", 1, teacher_cache=tmp_path, progress=False, log=lambda *_: None)
    assert res.mode == "one by one" and "dropout" in res.notes[0]
    with pytest.raises(ConfigError, match="dropout"):
        compare(recipe, "hinton", 1, teacher_cache=tmp_path, batched=True, progress=False, log=lambda *_: None)


def test_report_files(result, tmp_path):
    res, _ = result
    out = write_report(res, tmp_path / "rep")
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "summary.csv", "epochs.csv", "results.json", "step_losses.npz", "config.yaml", "accuracy.png", "step_loss.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["variant"] for r in rows] == res.variants
    assert float(rows[1]["final_acc_mean"]) == pytest.approx(res.summary("hinton").final_acc.mean)
    data = json.loads((out / "results.json").read_text())
    assert data["seeds"] == [0, 1, 2] and len(data["runs"]) == 9 and "torch" in data["environment"]
    md = (out / "report.md").read_text()
    assert "Paired difference vs `hinton`" in md and "| softmax-input |" in md and "![" in md
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KDLAB_TEACHER_CACHE", str(tmp_path / "cache"))
    code = main(["compare", "digits-mlp", "--losses", "hinton,extra-T", "--seeds", "2", "--out", str(tmp_path / "c"),
                 "--no-plots", "--set", "teacher.model.hidden=[16]", "--teacher-epochs", "1", "--student-epochs", "2",
                 "-T", "4", "--target-acc", "50"])
    out = capsys.readouterr().out
    assert code == 0 and "| extra-T |" in out and "Target = 50.00%" in out
    assert (tmp_path / "c" / "report.md").exists() and not (tmp_path / "c" / "accuracy.png").exists()
    assert main(["compare", "digits-mlp", "--losses", "nope", "--out", str(tmp_path / "bad")]) == 2
    assert "unknown loss 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


METHODS_FAST = FAST + ["distill.fitnets={pairs: {net.1: net.1}}", "distill.dkd={warmup: 1}"]


def test_methods_batch_where_they_can_and_match_the_loss_comparison(result, tmp_path):
    res, cache = result
    recipe = load_recipe("digits-mlp", METHODS_FAST)
    lines = []
    by_method = compare(recipe, None, 3, methods="hinton,fitnets,dkd,self-ema,multi-teacher", teacher_cache=cache,
                        progress=False, log=lines.append)
    assert by_method.variants == ["scratch", "hinton", "fitnets", "dkd", "self-ema", "multi-teacher"]
    assert by_method.mode == "partly batched"
    for part in ("fitnets trained one by one (its adapters are per-student parameters)",
                 "self-ema trained one by one (it is its own teacher",
                 "multi-teacher trained one by one (it reads each teacher member's logits"):
        assert part in by_method.notes[0]
    assert "dkd" not in by_method.notes[0]  # no closed form, but vmapped through autograd in the grid
    # the batched variants: the loss comparison's students. With dkd in the grid, the grid's step is autograd
    # (vmapped) rather than the closed form, so float rounding differs and grows over 3 epochs: the losses
    # agree to ~1e-3 and the accuracy to a sample or two (exactly, on some CPUs); a wrong step is far off
    for key in (("scratch", 1), ("hinton", 2)):
        got, want = by_method.runs[key], res.runs[key]
        for g, w in zip(got.history, want.history, strict=True):
            assert g["loss_total"] == pytest.approx(w["loss_total"], rel=2e-3)
        assert got.final_acc == pytest.approx(want.final_acc, abs=2.5 / 180)  # 180 test images in digits
    # a single teacher as a "mixture" of one: exactly Hinton KD, trained one by one through autograd
    for s in by_method.seeds:
        mixture, hinton = by_method.run("multi-teacher", s), by_method.run("hinton", s)
        for g, w in zip(mixture.history, hinton.history, strict=True):
            assert g["loss_total"] == pytest.approx(w["loss_total"], rel=2e-3)
        assert mixture.final_acc == pytest.approx(hinton.final_acc, abs=2.5 / 180)
    assert {"loss_hint"} <= set(by_method.run("fitnets", 0).history[-1]) and by_method.paired_vs_reference("dkd") is not None
    out = write_report(by_method, tmp_path / "rep", plots=False)
    header = (out / "epochs.csv").read_text().splitlines()[0]
    assert {"loss_hint", "loss_tckd", "loss_nckd"} <= set(header.split(","))
    assert "| fitnets |" in (out / "report.md").read_text()


def test_methods_are_checked_before_any_training(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    with pytest.raises(ConfigError, match="unknown method 'fitnet'"):
        compare(recipe, None, 1, methods="hinton,fitnet", teacher_cache=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="fitnets needs layer pairs"):
        compare(recipe, None, 1, methods="hinton,fitnets", teacher_cache=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="not both"):
        compare(recipe, "hinton", 1, methods="hinton", teacher_cache=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="fitnets trains one by one \\(its adapters are per-student parameters\\)"):
        compare(load_recipe("digits-mlp", METHODS_FAST), None, 1, methods="hinton,fitnets", teacher_cache=tmp_path,
                batched=True, progress=False)
    assert not list(tmp_path.iterdir())  # no teacher was trained for a refused comparison


def test_staged_variants_train_one_by_one_with_their_stages(result):
    _, cache = result
    recipe = load_recipe("digits-mlp", FAST + ["distill.stages=[{epochs: 1, terms: {hard: 1}}, {}]"])
    staged = compare(recipe, "hinton", 2, teacher_cache=cache, progress=False, log=lambda *_: None)
    assert "hinton trained one by one (staged)" in staged.notes[0]
    assert [h["stage"] for h in staged.run("hinton", 0).history] == [1, 2, 2]
    assert "stage" not in staged.run("scratch", 0).history[0]
    with pytest.raises(ConfigError, match="stages\\[0\\].terms: hint not a term"):
        compare(load_recipe("digits-mlp", FAST + ["distill.stages=[{epochs: 1, terms: {hint: 1}}, {}]"]), "hinton", 1,
                teacher_cache=cache, progress=False)


AUGMENTED = ["teacher.model={name: cnn, channels: [8, 8]}", "teacher.train.epochs=1", "student.train.epochs=2", "student.model={name: cnn, channels: [4, 8]}",
                        "augment={crop: 1, flip: true}", "teacher_signals={views: 2}"]


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    cache = tmp_path_factory.mktemp("teachers-augmented")
    recipe = load_recipe("digits-mlp", AUGMENTED)
    return compare(recipe, "hinton,softmax-input", 2, teacher_cache=cache, batched=True, progress=False,
                   log=lambda *_: None, profile=False), cache


def test_a_multi_teacher_study_computes_no_shared_store_nobody_reads(augmented):
    """Its runs read each member's logits (their own store); scratch reads no teacher: no study store."""
    _, cache = augmented
    recipe = load_recipe("digits-mlp", AUGMENTED + [
        "teachers=[{model: {name: cnn, channels: [8, 8]}, train: {epochs: 1}}, {model: {name: mlp, hidden: [16]}, train: {epochs: 1}}]"])
    res = compare(recipe, None, 1, methods="multi-teacher", teacher_cache=cache, progress=False, log=lambda *_: None,
                  profile=False)
    stores = [n for n in res.notes if n.startswith("teacher signal store")]
    assert len(stores) == 1 and "read by 1 student run(s)" in stores[0], res.notes
    assert len(res.run("multi-teacher", res.seeds[0]).history) == 2


def test_augmented_cnn_students_train_batched_from_one_store(augmented):
    res, _ = augmented
    assert res.mode == "batched"
    (note,) = [n for n in res.notes if n.startswith("teacher signal store")]
    assert "(logits; 2 view(s) per sample)" in note and "computed in" in note and "read by 4 student run(s)" in note
    for s in res.seeds:  # every variant of a seed: the same first views, the same start
        first = {v: res.run(v, s).step_losses[0, 1].item() for v in res.variants}
        assert max(first.values()) - min(first.values()) < 1e-5, first


def _assert_same_runs(seq, res):
    """Every run of the one-by-one study ``seq`` has the losses and accuracy of its batched twin in ``res``
    (closed form or vmapped autograd vs autograd: the soft term is a difference of sums, so atol 5e-5)."""
    for key, run in res.runs.items():
        torch.testing.assert_close(seq.runs[key].step_losses, run.step_losses, rtol=1e-4, atol=5e-5)
        assert seq.runs[key].final_acc == pytest.approx(run.final_acc, abs=1e-6)


def test_augmented_batched_equals_one_by_one_from_the_same_store(augmented):
    res, cache = augmented
    seq = compare(load_recipe("digits-mlp", AUGMENTED), "hinton,softmax-input", 2, teacher_cache=cache, batched=False,
                  progress=False, log=lambda *_: None, profile=False)
    assert seq.mode == "one by one"
    (note,) = [n for n in seq.notes if n.startswith("teacher signal store")]
    assert "reused from an earlier run" in note and "read by 4 student run(s)" in note
    _assert_same_runs(seq, res)


def test_augmented_methods_share_one_store_of_logits_and_features(augmented):
    _, cache = augmented
    recipe = load_recipe("digits-mlp", AUGMENTED + ["distill.fitnets={pairs: {features.5: features.5}}"])
    res = compare(recipe, None, 2, methods="hinton,fitnets", teacher_cache=cache, progress=False,
                  log=lambda *_: None, profile=False)
    # on a CPU, convolutional students train one by one unless --batched insists (their stacked convolutions are slower)
    assert res.mode == "one by one" and res.notes[0].startswith("students trained one by one because the student has "
                                                                 "convolutions") and "(--batched insists)" in res.notes[0]
    stores = [n for n in res.notes if "teacher signal store" in n]
    assert len(stores) == 1 and "(logits, features.5; 2 view(s) per sample)" in stores[0] and "read by 4 student run(s)" in stores[0]


def test_augmented_with_the_teacher_online_trains_one_by_one_and_refuses_batched(tmp_path, augmented):
    recipe = load_recipe("digits-mlp", AUGMENTED + ["teacher_signals={online: true}", "student.train.epochs=1"])
    with pytest.raises(ConfigError, match="scratch, hinton trains one by one \\(teacher_signals.online"):
        compare(recipe, "hinton", 1, teacher_cache=tmp_path, batched=True, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any teacher was trained
    res = compare(recipe, "hinton", 1, teacher_cache=augmented[1], progress=False, log=lambda *_: None, profile=False)
    assert res.mode == "one by one" and res.notes[0].startswith("scratch, hinton trained one by one (teacher_signals.online")
    assert not any("store" in n for n in res.notes) and "the others" not in res.notes[0]


AT_PAIRS = "distill.at={pairs: {features.2: features.2, features.5: features.5}, weight: 50}"


@pytest.mark.parametrize("augment", [True, False], ids=["augmented", "plain"])
def test_parameter_free_methods_train_batched_and_equal_one_by_one(augmented, augment):
    """AT (vmapped), RKD (its loss called per seed: data-dependent operations) and DKD (no closed form:
    vmapped autograd) batch beside scratch and Hinton KD (augmented: the store's replayed views; plain
    batches: the store's features of the training set) and give the numbers of training each student alone."""
    _, cache = augmented
    overrides = AUGMENTED + [AT_PAIRS] if augment else [o for o in AUGMENTED if not o.startswith(("augment", "teacher_signals"))] + [AT_PAIRS]
    recipe = load_recipe("digits-mlp", overrides + ["distill.dkd={warmup: 1}"])
    methods = "hinton,at,rkd,dkd"
    res = compare(recipe, None, 2, methods=methods, teacher_cache=cache, batched=True, progress=False, log=lambda *_: None,
                  profile=False)
    assert res.mode == "batched" and not any("one by one" in n for n in res.notes)
    (note,) = [n for n in res.notes if n.startswith("teacher signal store")]
    assert "features.2, features.5" in note and PENULTIMATE in note and "read by 8 student run(s)" in note
    assert {"loss_at"} <= set(res.run("at", 0).history[-1]) and {"loss_rkd_angle"} <= set(res.run("rkd", 0).history[-1])
    seq = compare(recipe, None, 2, methods=methods, teacher_cache=cache, batched=False, progress=False,
                  log=lambda *_: None, profile=False)
    assert seq.mode == "one by one"
    (again,) = [n for n in seq.notes if n.startswith("teacher signal store")]
    assert "reused from an earlier run" in again and "read by 8 student run(s)" in again
    _assert_same_runs(seq, res)


def test_attention_transfer_with_the_teacher_online_trains_one_by_one(augmented):
    """No store (teacher_signals.online), so no stored energy maps: AT cannot batch, and --batched says why.
    (Left to choose, the CNN students on a CPU all train one by one.)"""
    _, cache = augmented
    plain = [o for o in AUGMENTED if not o.startswith(("augment", "teacher_signals"))]
    recipe = load_recipe("digits-mlp", plain + [AT_PAIRS, "teacher_signals={online: true}", "student.train.epochs=1"])
    res = compare(recipe, None, 1, methods="hinton,at", teacher_cache=cache, progress=False, log=lambda *_: None, profile=False)
    assert res.mode == "one by one" and {"loss_at"} <= set(res.run("at", 0).history[-1])
    with pytest.raises(ConfigError, match="at trains one by one \\(teacher_signals.online"):
        compare(recipe, None, 1, methods="hinton,at", teacher_cache=cache, batched=True, progress=False, profile=False)
