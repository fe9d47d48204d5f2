import json

import pytest
import torch

from kdlab import CheckpointError
from kdlab.recipes import load_recipe
from kdlab.methods import CE, KD
from kdlab.pipeline import build_role_model, run_teacher
from kdlab.train import RunDir, evaluate, fit, load_checkpoint, load_model

FAST = ["teacher.model.hidden=[64]", "teacher.train.epochs=3", "student.train.epochs=3"]


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
    result = fit(model, digits, recipe.student.train, CE(), progress=False)
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
    from kdlab.teacher import FrozenTeacher, PrecomputedTeacherLogits
    from kdlab.train.optim import build_optimizer

    recipe = load_recipe("digits-mlp", ["student.train.epochs=2", "student.train.optimizer.name=sgd", "student.train.optimizer.momentum=0.9",
                                        "student.train.optimizer.lr=0.001", "student.train.scheduler.name=constant"])  # the loop below has no scheduler
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_role_model(recipe, "teacher", digits))
    T, hw, sw = 3.0, 0.3, 0.7
    method = KD(coding, T, hw, sw) if signal is not None else CE()
    soft_loss = {  # textbook forms, independent of kdlab's codings
        "hinton": lambda s, t: T * T * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
        "extra-T": lambda s, t: T**3 * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
        "softmax-input": lambda s, t: T * T * F.kl_div(F.softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean"),
    }[coding]
    torch.manual_seed(1)
    student = build_role_model(recipe, "student", digits)
    reference = build_role_model(recipe, "student", digits)
    reference.load_state_dict(student.state_dict())
    teacher_signal = PrecomputedTeacherLogits(teacher.logits_for(digits.train.x)) if signal == "cached" else None
    online = teacher if signal == "online" else None  # the teacher itself, run on every batch
    result = fit(student, digits, recipe.student.train, method, seed=3, teacher_signal=teacher_signal, teacher=online,
                 progress=False)

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
    # one column per named term: (total, hard) without a teacher, (total, hard, soft) with one
    assert result.step_losses.shape[1] == (2 if signal is None else 3)
    assert torch.isfinite(result.step_losses).all()


def test_a_method_subclass_is_trained_through_its_own_forward(digits):
    """A subclass that changes the objective must not be replaced by the closed form."""

    class WithPenalty(CE):
        def forward(self, batch, student, teacher):
            return {**super().forward(batch, student, teacher), "penalty": 0.5 * student.logits.pow(2).mean()}

        def term_weights(self):
            return {"hard": 1.0, "penalty": 1.0}

    recipe = load_recipe("digits-mlp", ["student.train.epochs=1"])
    torch.manual_seed(0)
    a = build_role_model(recipe, "student", digits)
    b = build_role_model(recipe, "student", digits)
    b.load_state_dict(a.state_dict())
    plain = fit(a, digits, recipe.student.train, CE(), progress=False)
    penalised = fit(b, digits, recipe.student.train, WithPenalty(), progress=False)
    # same hard loss on the first step (same weights, same batch); the total includes the penalty
    assert penalised.step_losses[0, 1] == pytest.approx(plain.step_losses[0, 1].item(), rel=1e-5)
    assert penalised.step_losses[0, 0] > penalised.step_losses[0, 1] + 1e-3


# --- non-finite losses (issue 9, part 4) -----------------------------------------------------------

TINY = ["student.model.hidden=[8]", "student.train.epochs=3"]


def _fingerprint(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_huge_lr_closed_form_stops_at_the_first_bad_step_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    from kdlab.pipeline import run_student
    from kdlab.train.loop import NonFiniteLossError

    # epoch 1 at lr 1e-3, then the step scheduler multiplies it by 1e30: epoch 2 diverges
    recipe = load_recipe("digits-mlp", TINY + ["student.train.scheduler.name=step", "student.train.scheduler.step_size=1",
                                                "student.train.scheduler.gamma=1.0e+30"])
    saved = {}

    def snapshot_after_epoch_1(epoch, method):
        if epoch == 2:
            saved.update(_fingerprint(tmp_path / "run"))

    model = build_role_model(recipe, "student", digits)
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, digits, recipe.student.train, CE(), run=RunDir(tmp_path / "run"), progress=False,
            before_epoch=snapshot_after_epoch_1)
    err = info.value
    assert (err.epoch, err.term) == (2, "hard") and 1 <= err.step <= 12
    assert f"epoch 2, step {err.step} of 12" in str(err) and "kept the last good checkpoint" in str(err)
    assert _fingerprint(tmp_path / "run") == saved, "nothing of the diverged epoch was written"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    best = load_checkpoint(tmp_path / "run" / "best.pt")["state_dict"]
    assert best and all(torch.isfinite(t).all() for t in best.values())
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 2 of 12; the model was not saved"):
        run_student(load_recipe("digits-mlp", TINY + ["student.train.optimizer.lr=1.0e+30"]), digits, out=False, progress=False)


class _Poisoned(KD):
    """Autograd path: the soft term becomes NaN at one (epoch, step), or the total's gradient infinite."""

    def __init__(self, at, what, steps_per_epoch=12):
        super().__init__("hinton", 3.0, 0.5, 0.5)
        self.calls, self.at, self.what, self.steps = 0, at, what, steps_per_epoch

    def forward(self, batch, student, teacher):
        terms = super().forward(batch, student, teacher)
        self.calls += 1
        if self.calls == self.at and self.what == "soft":
            terms["soft"] = terms["soft"] * float("nan")
        return terms

    def total(self, terms):
        total = super().total(terms)
        return _InfiniteGrad.apply(total) if self.calls == self.at and self.what == "grad" else total


class _InfiniteGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("what,at,expect", [("soft", 12 + 3, (2, 3, "soft")), ("grad", 12, (1, 12, "weights"))])
def test_autograd_nan_names_epoch_step_and_term(tmp_path, digits, what, at, expect):
    from kdlab.teacher import FrozenTeacher, PrecomputedTeacherLogits
    from kdlab.train.loop import NonFiniteLossError

    recipe = load_recipe("digits-mlp", TINY)
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_role_model(recipe, "teacher", digits))
    model = build_role_model(recipe, "student", digits)
    with pytest.raises(NonFiniteLossError) as info:
        fit(model, digits, recipe.student.train, _Poisoned(at, what), teacher_signal=PrecomputedTeacherLogits(teacher.logits_for(digits.train.x)),
            run=RunDir(tmp_path / "run"), progress=False, steps="autograd")  # its forward changes at one call
    assert (info.value.epoch, info.value.step, info.value.term) == expect
    epochs_saved = [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] \
        if (tmp_path / "run" / "metrics.jsonl").exists() else []
    assert epochs_saved == list(range(1, expect[0]))
    assert (tmp_path / "run" / "last.pt").exists() == (expect[0] > 1)


# --- callbacks and progress (issue 9, part 10) -----------------------------------------------------


def test_callbacks_run_once_per_epoch_outside_the_hot_loop(digits, capsys):
    from kdlab.train.loop import Callback, EpochLog

    class Recorder(Callback):
        def __init__(self):
            self.starts, self.records = [], []

        def on_fit_start(self, trainer):
            self.starts.append((trainer.start_epoch, trainer.cfg.epochs))

        def on_epoch_end(self, trainer, epoch, records):
            self.records.extend(dict(r) for r in records)

    recipe = load_recipe("digits-mlp", TINY)
    rec = Recorder()
    result = fit(build_role_model(recipe, "student", digits), digits, recipe.student.train, CE(),
                 progress=None, callbacks=[rec], desc="scratch")
    assert rec.starts == [(1, 3)] and rec.records == result.history
    lines = capsys.readouterr().err.splitlines()  # stderr is captured: not a terminal -> one line per epoch
    assert [line.split(":")[0] for line in lines] == ["scratch epoch 1/3", "scratch epoch 2/3", "scratch epoch 3/3"]
    assert f"test acc {100 * result.history[-1]['test_acc']:.2f}%" in lines[-1]
    fit(build_role_model(recipe, "student", digits), digits, recipe.student.train, CE(), progress=False)
    assert capsys.readouterr().err == ""
    assert isinstance(EpochLog("x", 3, bar=False), Callback)


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, digits):
    from kdlab.pipeline import run_student

    first = run_student(load_recipe("digits-mlp", TINY[:1] + ["student.train.epochs=2"]), digits, out=tmp_path / "r", progress=False)
    more = run_student(load_recipe("digits-mlp", TINY[:1] + ["student.train.epochs=4"]), digits, out=tmp_path / "r", progress=False, resume=True)
    assert [h["epoch"] for h in more.fit.history] == [1, 2, 3, 4] and len(more.fit.step_losses) == 2 * 12
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 4
    changed = [not torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), more.model.state_dict().values())]
    assert any(changed), "the extension trained"
    assert "epochs: 4" in (tmp_path / "r" / "config.yaml").read_text()
    assert len(json.loads((tmp_path / "r" / "run.json").read_text())["resumed"]) == 1


def test_existing_run_is_never_mixed_into(tmp_path, digits):
    from kdlab import KDLabError
    from kdlab.pipeline import run_student

    run_student(load_recipe("digits-mlp", TINY[:1] + ["student.train.epochs=1"]), digits, out=tmp_path / "r", progress=False)
    before = _fingerprint(tmp_path / "r")
    with pytest.raises(KDLabError, match="already holds a run"):
        run_student(load_recipe("digits-mlp", TINY), digits, out=tmp_path / "r", progress=False)
    assert _fingerprint(tmp_path / "r") == before
