import json

import pytest
import torch

from kdlab import CheckpointError
from kdlab.config import load_recipe
from kdlab.losses import DistillationObjective
from kdlab.pipeline import build_role_model, prepare_data, run_teacher
from kdlab.train import RunDir, evaluate, fit, load_checkpoint, load_model

FAST = ["teacher.model.hidden=[64]", "teacher.train.epochs=3", "student.train.epochs=3"]


@pytest.fixture(scope="module")
def digits():
    return prepare_data(load_recipe("digits-mlp"))


def test_training_learns_and_logs_every_epoch(tmp_path, digits):
    recipe = load_recipe("digits-mlp", FAST)
    result = run_teacher(recipe, digits, out=tmp_path / "run", progress=False)
    assert result.final_acc > 0.6 and result.fit.history[-1]["loss_total"] < result.fit.history[0]["loss_total"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    for key in ("loss_total", "loss_hard", "test_acc", "test_loss", "train_seconds", "eval_seconds", "seconds", "lr"):
        assert key in lines[0]
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["seed"] == 0 and run_info["environment"]["torch"] == torch.__version__
    assert "hidden:\n    - 64" in (tmp_path / "run" / "config.yaml").read_text()
    model, payload = load_model(tmp_path / "run" / "best.pt")
    assert evaluate(model, digits.test)["acc"] == pytest.approx(result.best_acc)
    assert payload["epoch"] == result.fit.best_epoch
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_same_seed_same_numbers_different_seed_different(digits):
    recipe = load_recipe("digits-mlp", FAST)
    a = run_teacher(recipe, digits, out=False, progress=False)
    b = run_teacher(recipe, digits, out=False, progress=False)
    c = run_teacher(load_recipe("digits-mlp", FAST + ["seed=1"]), digits, out=False, progress=False)
    torch.testing.assert_close(a.fit.step_losses, b.fit.step_losses, rtol=0, atol=0, equal_nan=True)
    assert not torch.allclose(a.fit.step_losses[:, 0], c.fit.step_losses[:, 0])


def test_resume_continues_exactly(tmp_path, digits):
    full = run_teacher(load_recipe("digits-mlp", FAST), digits, out=tmp_path / "full", progress=False)
    run_teacher(load_recipe("digits-mlp", FAST[:1] + ["teacher.train.epochs=3"]), digits, out=tmp_path / "part", progress=False)
    # simulate an interruption after epoch 2: roll last.pt back by re-running 2 epochs in another folder
    part2 = run_teacher(load_recipe("digits-mlp", FAST[:1] + ["teacher.train.epochs=2"]), digits, out=tmp_path / "p2", progress=False)
    state = load_checkpoint(tmp_path / "p2" / "last.pt")
    assert state["epoch"] == 2 and part2.fit.history[-1]["epoch"] == 2
    resumed = run_teacher(load_recipe("digits-mlp", FAST), digits, out=tmp_path / "p2", progress=False, resume=True)
    assert [h["epoch"] for h in resumed.fit.history] == [1, 2, 3]
    assert resumed.fit.history[-1]["test_acc"] == full.fit.history[-1]["test_acc"]
    assert resumed.fit.history[-1]["loss_total"] == pytest.approx(full.fit.history[-1]["loss_total"], rel=1e-6)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match="corrupt or not a kdlab checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a kdlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("opt,sched", [("sgd", "step"), ("adamw", "cosine"), ("adam", "constant")])
def test_optimizers_and_schedulers(digits, opt, sched):
    recipe = load_recipe(
        "digits-mlp",
        ["student.train.epochs=4", f"student.train.optimizer.name={opt}", f"student.train.scheduler.name={sched}",
         "student.train.scheduler.step_size=2", "student.train.optimizer.lr=0.01", "student.train.grad_clip=1.0"],
    )
    model = build_role_model(recipe, "student", digits)
    result = fit(model, digits, recipe.student.train, DistillationObjective(), progress=False)
    lrs = [h["lr"] for h in result.history]
    if sched == "step":
        assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001])
    elif sched == "cosine":
        assert lrs[0] == pytest.approx(0.01) and lrs[1] < lrs[0] and lrs[3] < lrs[2]
    else:
        assert lrs == [0.01] * 4
    assert result.final["test_acc"] > 0.5


def test_validation_split_selects_best_checkpoint(tmp_path, digits):
    recipe = load_recipe("digits-mlp", FAST + ["dataset.val_fraction=0.2"])
    result = run_teacher(recipe, out=tmp_path / "r", progress=False)
    assert result.fit.best_metric == "val_acc"
    assert "val_acc" in result.fit.history[0]


def test_rundir_names_are_unique(tmp_path):
    a, b = RunDir.new(tmp_path, "x"), RunDir.new(tmp_path, "x")
    assert a.path != b.path


@pytest.mark.parametrize("signal,coding", [("cached", "hinton"), ("online", "hinton"), (None, "hinton"), ("cached", "extra-T"), ("cached", "softmax-input")])
def test_closed_form_training_equals_a_plain_autograd_loop(digits, signal, coding):
    """fit's closed-form step (cached or online teacher, or no teacher) = the textbook loop."""
    import torch.nn.functional as F

    from kdlab.data import BatchIndexer
    from kdlab.teacher import CachedTeacherLogits, FrozenTeacher, OnlineTeacherLogits
    from kdlab.train.optim import build_optimizer

    recipe = load_recipe("digits-mlp", ["student.train.epochs=2", "student.train.optimizer.name=sgd", "student.train.optimizer.momentum=0.9",
                                        "student.train.optimizer.lr=0.001", "student.train.scheduler.name=constant"])  # the loop below has no scheduler
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_role_model(recipe, "teacher", digits))
    T, hw, sw = 3.0, 0.3, 0.7
    obj = DistillationObjective(coding, T, hw, sw)
    soft_loss = {  # textbook forms, independent of kdlab's codings
        "hinton": lambda s, t: T * T * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
        "extra-T": lambda s, t: T**3 * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
        "softmax-input": lambda s, t: T * T * F.kl_div(F.softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
    }[coding]
    torch.manual_seed(1)
    student = build_role_model(recipe, "student", digits)
    reference = build_role_model(recipe, "student", digits)
    reference.load_state_dict(student.state_dict())
    teacher_signal = {"cached": lambda: CachedTeacherLogits(teacher, digits.train.x), "online": lambda: OnlineTeacherLogits(teacher), None: lambda: None}[signal]()
    result = fit(student, digits, recipe.student.train, obj, seed=3, teacher_signal=teacher_signal, progress=False)

    cfg = recipe.student.train
    opt = build_optimizer(reference, cfg.optimizer)
    indexer = BatchIndexer(len(digits.train), cfg.batch_size, shuffle=True, seed=3)
    losses = []
    for _ in range(cfg.epochs):
        for idx in indexer.epoch():
            x, y = digits.train.x[idx], digits.train.y[idx]
            s = reference(x)
            loss = F.cross_entropy(s, y)
            if signal is not None:
                loss = hw * loss + sw * soft_loss(s, teacher(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    torch.testing.assert_close(result.step_losses[:, 0], torch.tensor(losses), rtol=1e-4, atol=1e-5)
    for a, b in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.isnan(result.step_losses[:, 2]).all() == (signal is None)


def test_an_objective_subclass_is_trained_through_its_own_forward(digits):
    """A subclass that changes the objective must not be replaced by the closed form."""

    class WithPenalty(DistillationObjective):
        def forward(self, student_logits, labels, teacher_logits=None):
            terms = super().forward(student_logits, labels, teacher_logits)
            terms["total"] = terms["total"] + 0.5 * student_logits.pow(2).mean()
            return terms

    recipe = load_recipe("digits-mlp", ["student.train.epochs=1"])
    torch.manual_seed(0)
    a = build_role_model(recipe, "student", digits)
    b = build_role_model(recipe, "student", digits)
    b.load_state_dict(a.state_dict())
    plain = fit(a, digits, recipe.student.train, DistillationObjective(), progress=False)
    penalised = fit(b, digits, recipe.student.train, WithPenalty(), progress=False)
    # same hard loss on the first step (same weights, same batch); the total includes the penalty
    assert penalised.step_losses[0, 1] == pytest.approx(plain.step_losses[0, 1].item(), rel=1e-5)
    assert penalised.step_losses[0, 0] > penalised.step_losses[0, 1] + 1e-3
