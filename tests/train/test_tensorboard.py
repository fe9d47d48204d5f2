"""TensorBoard event files: every run writes them beside metrics.jsonl; compare writes one per student."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.cli import main
from kdlab.methods import KD
from kdlab.pipeline import build_role_model, prepare_data
from kdlab.recipes import load_recipe
from kdlab.study.compare import compare
from kdlab.teacher import PrecomputedTeacherLogits
from kdlab.train import RunDir, fit

FAST = ["teacher.model.hidden=[32]", "teacher.train.epochs=2", "student.model.hidden=[16]", "student.train.epochs=2"]


def _scalars(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_a_run_writes_every_epoch_key_and_step_losses(tmp_path):
    recipe = load_recipe("digits-mlp", FAST)
    data = prepare_data(recipe)
    model = build_role_model(recipe, "student", data)
    logits = torch.randn(len(data.train), data.num_classes)
    run = RunDir(tmp_path / "run")
    result = fit(model, data, recipe.student.train, KD("hinton", 4.0, 0.5, 0.5), teacher_signal=PrecomputedTeacherLogits(logits),
                 run=run, progress=False)
    assert list(run.path.glob("events.out.tfevents.*")) and (run.path / "metrics.jsonl").is_file()
    acc = _scalars(run.path)
    tags = set(acc.Tags()["scalars"])
    record = result.history[-1]
    expected = {f"epoch/{k}" for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))}
    assert {"epoch/loss_total", "epoch/loss_hard", "epoch/loss_soft", "epoch/test_acc", "epoch/lr", "epoch/temperature",
            "epoch/hard_weight", "epoch/soft_weight"} <= expected
    assert expected <= tags
    assert {"step/loss_total", "step/loss_hard", "step/loss_soft"} <= tags
    test_acc = acc.Scalars("epoch/test_acc")
    assert [e.step for e in test_acc] == [1, 2]
    assert test_acc[-1].value == pytest.approx(record["test_acc"])
    n = result.step_losses.shape[0] // 2  # steps per epoch; every 10th step of each epoch is logged
    logged = acc.Scalars("step/loss_total")
    assert [e.step for e in logged] == [e * n + k for e in (0, 1) for k in range(10, n + 1, 10)]
    first = logged[0]
    assert first.value == pytest.approx(float(result.step_losses[first.step - 1, 0]), rel=1e-5)


def test_switched_off_by_recipe_and_cli(tmp_path):
    out = tmp_path / "s"
    assert main(["train-student", "digits-mlp", "--epochs", "1", "--out", str(out), "--no-tensorboard",
                 "--set", "student.model.hidden=[8]"]) == 0
    assert (out / "metrics.jsonl").is_file() and not list(out.glob("events.out.tfevents.*"))
    out2 = tmp_path / "s2"
    assert main(["train-student", "digits-mlp", "--epochs", "1", "--out", str(out2), "--set", "student.model.hidden=[8]"]) == 0
    assert list(out2.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("batched", [True, False])
def test_compare_writes_one_run_per_variant_and_seed(tmp_path, batched):
    recipe = load_recipe("digits-mlp", FAST)
    tb = tmp_path / "tb"
    res = compare(recipe, "hinton,softmax-input", 2, teacher_cache=tmp_path / "cache", batched=batched, progress=False,
                  log=lambda *_: None, tensorboard_dir=tb)
    names = sorted(p.name for p in tb.iterdir())
    assert names == sorted(f"{v}-seed{s}" for v in ("scratch", "hinton", "softmax-input") for s in (0, 1))
    for (variant, seed), run in res.runs.items():
        acc = _scalars(tb / f"{variant}-seed{seed}")
        values = [e.value for e in acc.Scalars("epoch/test_acc")]
        assert values == pytest.approx([h["test_acc"] for h in run.history])
        assert "step/loss_total" in acc.Tags()["scalars"]
        if variant != "scratch":
            assert "step/loss_soft" in acc.Tags()["scalars"] and "epoch/temperature" in acc.Tags()["scalars"]


def test_compare_cli_writes_tb_next_to_the_report(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "digits-mlp", "--losses", "hinton", "--seeds", "1", "--out", str(out), "--no-plots",
                 "--teacher-cache", str(tmp_path / "cache"), *sum((["--set", o] for o in FAST), [])]) == 0
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["hinton-seed0", "scratch-seed0"]
