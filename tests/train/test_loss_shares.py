"""Loss shares in the epoch records and the once-per-run note when one weighted term drowns the rest."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

import kdlab
from kdlab.config import DistillConfig, OptimizerConfig, StageConfig, TrainConfig
from kdlab.data import DatasetSplits, TensorData
from kdlab.methods import METHODS, build_method
from kdlab.teacher import FrozenTeacher
from kdlab.train import RunDir, distributed, fit
from kdlab.train.callbacks import DOMINANT_SHARE, LossShareNote
from kdlab.train.loop import loss_share_note
from kdlab.train.records import term_shares
from kdlab.train.weights import WeightPlan
from tests.test_api import _data
from tests.user_models import TinyCNN

PAIRS = {"block2": "block2"}


def _fitnets(weight: float = 100.0):
    return build_method("fitnets", DistillConfig(), {"pairs": PAIRS, "weight": weight})


def _trainer(method, histories=()):
    return SimpleNamespace(methods=[method], histories=[list(h) for h in histories])


def test_shares_are_each_weighted_terms_part_of_the_loss_by_hand():
    record = {"loss_hard": 2.0, "loss_soft": 1.0, "loss_hint": 0.79}
    shares = term_shares(record, {"hard": 0.5, "soft": 0.5, "hint": 100.0})
    # 0.5·2 = 1, 0.5·1 = 0.5, 100·0.79 = 79: of 80.5 in all
    assert shares == pytest.approx({"hard": 1 / 80.5, "soft": 0.5 / 80.5, "hint": 79 / 80.5}, rel=1e-12)
    # a term of weight 0 is not part of the loss; one weighted term is all of it (no shares)
    assert term_shares(record, {"hard": 0.5, "soft": 0.0, "hint": 100.0}) == pytest.approx({"hard": 1 / 80.0, "hint": 79 / 80.0})
    assert term_shares(record, {"hard": 0.0, "soft": 0.0, "hint": 100.0}) == {}
    assert term_shares({"loss_hard": 0.0, "loss_soft": 0.0}, {"hard": 0.5, "soft": 0.5}) == {}
    # a negative term counts by its size, so it cannot hide a large one
    assert term_shares({"loss_a": -3.0, "loss_b": 1.0}, {"a": 1.0, "b": 1.0}) == pytest.approx({"a": 0.75, "b": 0.25})


def test_one_note_at_the_first_epoch_naming_share_numbers_and_setting():
    said = []
    note = LossShareNote(say=said.append)
    method = _fitnets()
    trainer = _trainer(method)
    note.on_fit_start(trainer)
    records = [{"epoch": e, "loss_total": 80.5, "loss_hard": 2.0, "loss_soft": 1.0, "loss_hint": 0.79} for e in (1, 2)]
    for r in records:
        note.on_epoch_end(trainer, r["epoch"], [r])
    assert said == ["kdlab: note: the hint term is 98% of the loss in epoch 1 (hint 100 × 0.79, hard 0.5 × 2, soft 0.5 × 1); "
                    "if the student lags, lower distill.fitnets.weight (kdlab.distill: weight=)"]
    assert records[0]["notes"] == [said[0][len("kdlab: note: "):]] and "notes" not in records[1]
    assert records[1]["share_hint"] == pytest.approx(79 / 80.5)  # shares in every record, the note once


def test_no_note_when_balanced_and_none_later_when_the_start_was_balanced():
    said = []
    note, method = LossShareNote(say=said.append), _fitnets(1.0)
    trainer = _trainer(method)
    note.on_fit_start(trainer)
    first = {"loss_hard": 2.0, "loss_soft": 1.0, "loss_hint": 0.79}  # 1 + 0.5 + 0.79: hard is 44%
    late = {"loss_hard": 0.001, "loss_soft": 0.001, "loss_hint": 0.5}  # a fitted student: hint 99.8%, not judged
    for epoch, r in ((1, first), (2, late)):
        note.on_epoch_end(trainer, epoch, [r])
    assert said == [] and "notes" not in first and "notes" not in late
    assert first["share_hard"] == pytest.approx(1 / 2.29) and late["share_hint"] > DOMINANT_SHARE


def test_a_hint_only_stage_is_not_judged_the_first_joint_epoch_is():
    said = []
    note = LossShareNote(say=said.append)
    method = build_method("fitnets", DistillConfig(), {"pairs": PAIRS, "hint_epochs": 1})
    trainer = _trainer(method)
    note.on_fit_start(trainer)
    for epoch in (1, 2):
        WeightPlan().apply([method], epoch)
        r = {"loss_hard": 2.0, "loss_soft": 1.0, "loss_hint": 0.79}
        note.on_epoch_end(trainer, epoch, [r])
        assert ("share_hint" in r) == (epoch == 2)
    assert len(said) == 1 and "in epoch 2" in said[0]


def test_a_staged_run_names_the_stage_setting():
    method = _fitnets()
    WeightPlan(stages=[StageConfig(epochs=1), StageConfig(terms={"hard": 0.5, "hint": 100.0})]).apply([method], 2)
    assert method.weight_setting("hint") == "distill.stages[1].terms.hint (kdlab.distill: stages=)"


def test_a_resumed_run_that_was_judged_gets_no_second_note():
    said = []
    note, method = LossShareNote(say=said.append), _fitnets()
    earlier = {"epoch": 1, "loss_hard": 2.0, "loss_soft": 1.0, "loss_hint": 0.79, "share_hint": 0.98}
    trainer = _trainer(method, [[earlier]])
    note.on_fit_start(trainer)
    note.on_epoch_end(trainer, 2, [{"loss_hard": 2.0, "loss_soft": 1.0, "loss_hint": 0.79}])
    assert said == []


def test_the_note_is_printed_by_rank_zero_only_and_not_when_progress_is_off(monkeypatch):
    assert loss_share_note(None).say is not None
    assert loss_share_note(False).say is None  # still recorded in the metrics
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert loss_share_note(None).say is None


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_term_of_every_method_names_a_real_setting(name):
    params = {"pairs": {"block1": "block1"}} if name in ("fitnets", "at") else {}
    method = build_method(name, DistillConfig(), params)
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).params)} if METHODS.get(name).params else set()
    weights = method.term_weights()
    if len(weights) < 2:  # one term (ce) is all of the loss: never noted
        return
    for term in weights:
        text = method.weight_setting(term)
        key, keyword = text.split(" (kdlab.distill: ")
        if key.startswith(f"distill.{name}."):
            assert key.split(".")[-1] in fields and keyword == f"{key.split('.')[-1]}=)"
        else:
            field = key.split(".", 1)[1]
            assert field in {f.name for f in dataclasses.fields(DistillConfig)} and keyword == f"{field}=)", text


def _teacher(ds):
    torch.manual_seed(0)
    teacher = TinyCNN(8)
    kdlab.distill(teacher, None, ds, ds, method="ce", epochs=5, lr=1e-2, out=False, progress=False)
    return teacher


def test_distill_fitnets_weight_100_gets_exactly_one_note_with_the_right_share(tmp_path, capsys):
    x, y = _data()
    ds = TensorDataset(x, y)
    teacher = _teacher(ds)
    capsys.readouterr()
    torch.manual_seed(1)
    kdlab.distill(TinyCNN(2), teacher, ds, ds, method="fitnets", pairs=PAIRS, epochs=3, out=tmp_path / "run", progress=None)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdlab: note:")]
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    share = 100 * first["loss_hint"] / (0.5 * first["loss_hard"] + 0.5 * first["loss_soft"] + 100 * first["loss_hint"])
    assert share > DOMINANT_SHARE
    assert len(lines) == 1 and lines[0].startswith(f"kdlab: note: the hint term is {100 * share:.0f}% of the loss in epoch 1 (hint 100 × ")
    assert lines[0].endswith("lower distill.fitnets.weight (kdlab.distill: weight=)")
    assert first["share_hint"] == pytest.approx(share) and first["notes"] == [lines[0][len("kdlab: note: "):]]
    assert [r.get("notes") for r in records[1:]] == [None, None]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["notes"] == first["notes"]


def test_distill_balanced_hinton_gets_no_note(tmp_path, capsys):
    x, y = _data()
    ds = TensorDataset(x, y)
    teacher = _teacher(ds)
    capsys.readouterr()
    torch.manual_seed(1)
    kdlab.distill(TinyCNN(2), teacher, ds, ds, method="hinton", epochs=3, out=tmp_path / "run", progress=None)
    assert "kdlab: note:" not in capsys.readouterr().err
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("notes" not in r for r in records) and "notes" not in json.loads((tmp_path / "run" / "run.json").read_text())
    first = records[0]
    assert first["share_soft"] == pytest.approx(first["loss_soft"] / (first["loss_hard"] + first["loss_soft"]))
    assert first["share_hard"] + first["share_soft"] == pytest.approx(1.0)


def test_fit_records_the_note_in_metrics_and_prints_it(tmp_path, capsys):
    """The recipe path (``kdlab distill``) assembles its run through ``fit``."""
    x, y = _data()
    teacher = _teacher(TensorDataset(x, y))
    data = DatasetSplits("toy", TensorData(x, y), TensorData(x, y), ["a", "b", "c"])
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer=OptimizerConfig(lr=1e-3))
    capsys.readouterr()
    torch.manual_seed(1)
    with FrozenTeacher(teacher) as frozen:
        fit(TinyCNN(2), data, cfg, _fitnets(), teacher=frozen, run=RunDir(tmp_path / "run"), progress=None, desc="distill")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdlab: note:")]
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and records[0]["notes"] == [lines[0][len("kdlab: note: "):]] and "notes" not in records[1]
