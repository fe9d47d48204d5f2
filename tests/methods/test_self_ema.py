"""Self-distillation from an EMA of the student: the average by hand, no gradient, resume, pipeline."""

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import ConfigError
from kdlab.methods import build_method
from kdlab.methods.self_ema import SelfEMA, SelfEMAParams, ema_decay, ema_update
from kdlab.pipeline import build_role_model, prepare_data, run_distill
from kdlab.recipes import load_recipe
from kdlab.train.build import build_trainer


def test_decay_warm_up_and_update_by_hand():
    assert ema_decay(0.999, 0) == pytest.approx(0.1) and ema_decay(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.9, 10_000) == 0.9
    ema, model = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        ema.weight.fill_(1.0), model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema_update(ema, model, 0.75)
    torch.testing.assert_close(ema.weight, torch.full((2,), 0.75 * 1 + 0.25 * 3))
    torch.testing.assert_close(ema.running_mean, torch.full((2,), 7.0))  # buffers are copied


def test_bad_decay_is_one_line():
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="distill.self-ema.decay: must be a number in") as e:
            build_method("self-ema", load_recipe("digits-mlp").distill, {"decay": bad})
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def digits():
    recipe = load_recipe("digits-mlp", ["student.model.hidden=[12]", "student.train.epochs=2", "distill.method=self-ema",
                                        "distill.temperature=2", "distill.hard_weight=0.5", "distill.soft_weight=0.5"])
    return recipe, prepare_data(recipe)


def test_first_steps_written_out_and_the_ema_is_never_trained(digits):
    recipe, data = digits
    student = build_role_model(recipe, "student", data)
    ref = copy.deepcopy(student)
    method = build_method("self-ema", recipe.distill, {"decay": 0.9})
    trainer = build_trainer(student, method, data, recipe.student.train, seed=0)
    assert trainer.cached_logits is None and not any(p.requires_grad for p in method.ema.parameters())
    assert all(p is not q for p in trainer.trainable_parameters() for q in method.ema.parameters())
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x, y = data.train.x[idx], data.train.y[idx]
    ref.train()
    s = ref(x)
    with torch.no_grad():
        t = copy.deepcopy(ref).eval()(x)  # step 1: the average of the initial weights is the initial weights
    kd = F.kl_div(F.log_softmax(s / 2, 1), F.log_softmax(t / 2, 1), reduction="batchmean", log_target=True) * 4
    expected = 0.5 * F.cross_entropy(s, y) + 0.5 * kd
    rows = trainer.train_epoch()
    assert float(rows[0, 0]) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert int(method.steps) == len(rows)


def test_exact_resume_with_the_average_and_its_step_count(digits):
    recipe, data = digits

    def trainer(student):
        return build_trainer(student, build_method("self-ema", recipe.distill, {}), data, recipe.student.train, seed=0)

    a = trainer(build_role_model(recipe, "student", data))
    a.train_epoch()
    a.epoch = 1
    buf = io.BytesIO()
    torch.save({"model": a.model.state_dict(), "trainer": a.state_dict()}, buf)
    continuous = a.train_epoch()
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    student = build_role_model(recipe, "student", data)
    student.load_state_dict(saved["model"])
    b = trainer(student)
    b.load_state_dict(saved["trainer"])
    assert int(b.method.steps) == int(saved["trainer"]["method_state"]["steps"]) > 0
    torch.testing.assert_close(b.train_epoch(), continuous)


def test_through_the_pipeline_no_teacher_is_trained(digits, tmp_path):
    recipe, data = digits
    lines = []
    result = run_distill(recipe, None, data, out=tmp_path / "run", progress=False, teacher_cache=tmp_path / "cache",
                         log=lines.append)
    assert "its own teacher" in lines[-1] and not (tmp_path / "cache").exists()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["teacher"].startswith("none")
    assert [r["epoch"] for r in result.fit.history] == [1, 2] and result.final_acc > 0.5
    assert "ema_decay" in result.fit.history[-1]
    assert not SelfEMA(SelfEMAParams()).needs.teacher
