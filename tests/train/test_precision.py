"""Mixed precision (autocast, GradScaler), flushing subnormals, channels_last, and their config checks."""

import json
import math

import pytest
import torch

from kdlab import ConfigError
from kdlab.config import TrainConfig
from kdlab.device import autocast_dtype, cpu_info, flush_denormal_enabled, set_flush_denormal
from kdlab.methods import CE, KD
from kdlab.pipeline import build_role_model, prepare_data, run_student
from kdlab.recipes import load_recipe
from kdlab.train.callbacks import Callback
from kdlab.train.build import build_trainer


@pytest.fixture(scope="module")
def setup():
    recipe = load_recipe("digits-mlp", ["student.model.hidden=[32]"])
    data = prepare_data(recipe)
    torch.manual_seed(0)
    return recipe, data, torch.randn(len(data.train), data.num_classes) * 3


def _cfg(**kw):
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 64, **kw})
    cfg.optimizer.lr = 0.01
    return cfg


class TermDtypes(KD):
    """KD recording the dtype of the logits it receives and of the terms it returns."""

    seen: list

    def forward(self, batch, student, teacher):
        terms = super().forward(batch, student, teacher)
        self.seen.append((student.logits.dtype, teacher.logits.dtype, {k: v.dtype for k, v in terms.items()}))
        return terms


def test_bf16_autocast_trains_with_fp32_loss_terms(setup):
    recipe, data, logits = setup
    method = TermDtypes("hinton", 4.0, 0.5, 0.5)
    method.seen = []
    model = build_role_model(recipe, "student", data)
    inner = []
    model.register_forward_hook(lambda m, i, o: inner.append(o.dtype))
    trainer = build_trainer(model, method, data, _cfg(precision="bf16"), teacher_logits=logits)
    assert trainer.fast is None and trainer.amp_dtype == torch.bfloat16  # autocast runs on the autograd path
    (result,) = trainer.fit()
    assert inner[0] == torch.bfloat16  # the forward ran in bf16 ...
    assert {s for s, _, _ in method.seen} == {torch.float32}  # ... the method got fp32 logits
    assert all(d == torch.float32 for *_, terms in method.seen for d in terms.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    hist = result.history
    assert hist[-1]["loss_total"] < hist[0]["loss_total"] and hist[-1]["test_acc"] > 0.5
    assert trainer.run_facts()["precision"] == {"setting": "bf16", "autocast": "bf16", "grad_scaler": False, "device": "cpu"}


def test_precision_auto_follows_the_cpu():
    expected = torch.bfloat16 if cpu_info()["bf16_native"] else None
    assert autocast_dtype("auto", torch.device("cpu")) is expected
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="use bf16"):
        autocast_dtype("fp16", torch.device("cpu"))


def test_cpu_info_reports_bf16_flags():
    info = cpu_info()
    assert set(info) >= {"model", "capability", "amx", "avx512_bf16", "bf16_native"}
    assert info["bf16_native"] == (info["amx"] or info["avx512_bf16"])


def _scaled(trainer, init_scale):
    """An enabled GradScaler on the CPU (fp16 itself needs CUDA; the scaler logic is device-independent)."""
    trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return trainer


def test_grad_scaler_unscales_before_clipping_and_is_saved(setup):
    recipe, data, logits = setup
    cfg = _cfg(precision="bf16", grad_clip=0.05, epochs=1)
    plain = build_role_model(recipe, "student", data)
    scaled = build_role_model(recipe, "student", data)
    build_trainer(plain, KD("hinton", 4.0, 0.5, 0.5), data, cfg, seed=1, teacher_logits=logits).fit()
    trainer = _scaled(build_trainer(scaled, KD("hinton", 4.0, 0.5, 0.5), data, cfg, seed=1, teacher_logits=logits), 2.0 ** 12)
    trainer.fit()
    for p, q in zip(plain.parameters(), scaled.parameters()):  # a power-of-two scale, unscaled before clipping: same steps
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] == trainer.scaler.get_scale()
    fresh = _scaled(build_trainer(build_role_model(recipe, "student", data), CE(), data, cfg), 1.0)
    fresh.load_state_dict(state)
    assert fresh.scaler.get_scale() == trainer.scaler.get_scale()


def test_grad_scaler_skips_overflowing_steps_with_the_fused_adam(setup):
    recipe, data, logits = setup
    model = build_role_model(recipe, "student", data)
    trainer = _scaled(build_trainer(model, CE(), data, _cfg(precision="bf16"), teacher_logits=logits), 2.0 ** 127)
    trainer.train_epoch()  # first steps overflow and are skipped (scale halves each time) until the scale fits
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data.train.x[:64], data.train.y[:64]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    trainer.optimizer.zero_grad()
    trainer.scaler.scale(loss * float("inf")).backward()
    scale = trainer.scaler.get_scale()
    trainer.step._optimizer_step(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped, not NaN weights
    assert trainer.scaler.get_scale() == scale / 2


def subnormals_kept() -> int:
    """How many of 1M products that should be subnormal (1e-40) were not flushed to zero; a tensor
    this large is split across the intra-op threads, so each thread's flags count."""
    return int((torch.full((1_000_000,), 1e-30) * 1e-10 != 0).sum())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.randn(500, 500) @ torch.randn(500, 500)  # the worker pool exists before any flag is set
    yield
    set_flush_denormal(False)
    torch.set_num_threads(before)


def test_set_flush_denormal_reaches_every_intra_op_thread(two_threads):
    assert subnormals_kept() == 1_000_000
    torch.set_flush_denormal(True)  # torch's own setter: the calling thread only
    assert 0 < subnormals_kept() < 1_000_000  # the worker's share is still subnormal (why kdlab has its own)
    assert set_flush_denormal(True) == (True, True)
    assert subnormals_kept() == 0
    assert set_flush_denormal(False) == (True, True)
    assert subnormals_kept() == 1_000_000


class FlushProbe(Callback):
    def __init__(self):
        self.inside = []

    def on_epoch_start(self, trainer, epoch):
        self.inside.append(flush_denormal_enabled() and subnormals_kept() == 0)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_set_during_training_and_restored(setup, flush, two_threads):
    recipe, data, _ = setup
    probe = FlushProbe()
    set_flush_denormal(not flush)
    try:
        build_trainer(build_role_model(recipe, "student", data), CE(), data, _cfg(epochs=2, flush_denormal=flush), callbacks=[probe]).fit()
        assert probe.inside == [flush, flush]
        assert flush_denormal_enabled() is (not flush)  # the caller's mode is back
        assert (subnormals_kept() == 0) is (not flush)  # on every thread
    finally:
        set_flush_denormal(False)


def test_run_json_records_precision_and_flushing(tmp_path):
    recipe = load_recipe("digits-mlp", ["student.model.hidden=[16]", "student.train.epochs=1", "student.train.precision=bf16",
                                        "student.train.accumulate_steps=2"])
    run_student(recipe, out=tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["flush_denormal"] is True and info["flush_denormal_supported"] in (True, False)
    assert info["flush_denormal_all_threads"] is info["flush_denormal_supported"]  # torch's CPU builds use libgomp
    assert info["precision"]["autocast"] == "bf16" and info["accumulate_steps"] == 2 and info["effective_batch_size"] == 256
    assert info["closed_form_steps"] is False
    assert {"amx", "avx512_bf16", "capability"} <= set(info["environment"]["cpu"])


def test_channels_last_cnn_bf16_trains(tmp_path):
    recipe = load_recipe("digits-mlp", ["student.model={name: cnn, channels: [4, 8]}", "student.train.epochs=1",
                                        "student.train.precision=bf16", "student.train.channels_last=true"])
    result = run_student(recipe, out=False, progress=False)
    assert result.fit.history[0]["test_acc"] > 0.2
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("override, message", [
    ("student.train.precision=fp17", "student.train.precision: unknown precision 'fp17'; valid: fp32, bf16, fp16, auto"),
    ("student.train.precision=fp16", "student.train.precision: fp16 needs a CUDA device (device is cpu); use bf16 on the CPU"),
    ("student.train.accumulate_steps=0", "student.train.accumulate_steps: must be an integer in [1, 65536], got 0"),
    ("teacher.train.warmup_epochs=-1", "teacher.train.warmup_epochs: must be an integer in [0, epochs - 1] = [0, 49], got -1"),
    ("student.train.warmup_epochs=200", "student.train.warmup_epochs: must be an integer in [0, epochs - 1] = [0, 199], got 200"),
    ("student.train.flush_denormal=maybe", "student.train.flush_denormal: expected bool, got 'maybe'"),
    ("student.train.tensorboard=1", "student.train.tensorboard: expected bool, got 1"),
])
def test_config_errors_are_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe("digits-mlp", [override])
    assert str(err.value) == message


def test_kdlab_env_names_the_cpu_bf16_support(capsys):
    from kdlab.cli import main

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "AMX" in out and "AVX-512-BF16" in out and "precision auto" in out and "torch:" in out


def test_online_teacher_runs_channels_last_and_is_handed_back_as_given(digits):
    """With channels_last, a teacher that runs on every batch (AT needs its features) takes the
    student's layout, so bf16 convolutions are fast on both sides; release restores its layout."""
    from kdlab.methods import build_method
    from kdlab.teacher import FrozenTeacher
    from tests.user_models import TinyCNN

    recipe = load_recipe("digits-mlp", ["student.train.epochs=1", "student.train.channels_last=true",
                                        "student.train.precision=bf16"])
    torch.manual_seed(0)
    teacher, student = TinyCNN(8, classes=10), TinyCNN(4, classes=10)
    given = {k: v.clone() for k, v in teacher.state_dict().items()}
    layouts = []
    teacher.block2.register_forward_hook(
        lambda m, i, o: layouts.append(m[0].weight.is_contiguous(memory_format=torch.channels_last)))
    method = build_method("at", recipe.distill, {"pairs": {"block2": "block2"}})
    with FrozenTeacher(teacher) as frozen:
        trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=frozen)
        assert trainer.cached_logits is None
        layouts.clear()  # the build pass above (AT's shape probe) ran before the run's layout was set
        (result,) = trainer.fit()
    assert layouts and all(layouts)  # every online teacher forward ran channels_last
    assert all(math.isfinite(r["loss_total"]) for r in result.history)
    for name, p in teacher.named_parameters():  # handed back in its own layout, values unchanged
        assert p.is_contiguous(), name
        assert torch.equal(p, given[name]), name


def _cnn(channels=(4, 8)):
    from kdlab.models import build_model
    torch.manual_seed(0)
    return build_model("cnn", (1, 8, 8), 10, {"channels": list(channels)})


def test_channels_last_auto_resolves_by_model_and_device():
    from kdlab.device import resolve_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert resolve_channels_last("auto", cpu, "fp32", mlp) == (False, "auto: no convolution weights")
    assert resolve_channels_last("auto", cpu, "fp32", None) == (False, "auto: no convolution weights")
    assert resolve_channels_last("auto", cpu, "fp32", mlp, _cnn())[0] is True  # any model with convolutions
    assert resolve_channels_last("auto", cpu, "fp32", _cnn()) == (True, "auto: convolutions on a CPU run faster in channels_last")
    assert resolve_channels_last("auto", cuda, "fp32", _cnn()) == (False, "auto: fp32 on cuda keeps the standard layout")
    assert resolve_channels_last("auto", cuda, "bf16", _cnn())[0] is True
    assert resolve_channels_last(False, cpu, "fp32", _cnn()) == (False, "train.channels_last=false")
    assert resolve_channels_last(True, cpu, "fp32", mlp) == (True, "train.channels_last=true")


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("true", True), ("false", False)])
def test_channels_last_setting_takes_auto_and_booleans(value, expected):
    assert TrainConfig().channels_last == "auto"
    recipe = load_recipe("digits-mlp", [f"student.train.channels_last={value}"])
    assert recipe.student.train.channels_last == expected


@pytest.mark.parametrize("value", ["sometimes", "1", "[true]"])
def test_channels_last_refuses_other_values_in_one_line(value):
    with pytest.raises(ConfigError) as err:
        load_recipe("digits-mlp", [f"student.train.channels_last={value}"])
    assert str(err.value).startswith("student.train.channels_last: expected ")
    assert "\n" not in str(err.value)


def _toy_cnn_data():
    from tests.toy_signals import toy_data
    return toy_data()


@pytest.mark.parametrize("setting", ["auto", False])
def test_closed_form_step_trains_a_cnn_in_channels_last_as_autograd_does(setting):
    """``auto`` puts a CNN student on a CPU in channels_last; the closed-form step still applies
    (a memory format changes no formula), records the choice, and follows autograd's weights."""
    data = _toy_cnn_data()
    table = torch.randn(len(data.train), data.num_classes, generator=torch.Generator().manual_seed(1)) * 3
    cfg = TrainConfig(epochs=2, batch_size=16, channels_last=setting)
    runs = {}
    for steps in ("auto", "autograd"):
        model = _toy_student()
        trainer = build_trainer(model, KD("hinton", 4.0, 0.3, 0.7), data, cfg, seed=0, teacher_logits=table, steps=steps)
        (result,) = trainer.fit()
        facts = trainer.run_facts()
        runs[steps] = (model, result, facts)
    model, result, facts = runs["auto"]
    assert facts["step"] == "closed form"
    assert facts["channels_last"] is (setting == "auto")
    assert facts["channels_last_reason"] == ("auto: convolutions on a CPU run faster in channels_last" if setting == "auto"
                                             else "train.channels_last=false")
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 4 -> 8 channels: the layouts differ
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is (setting == "auto")
    ref_model, ref, ref_facts = runs["autograd"]
    assert ref_facts["step"] == "autograd" and ref_facts["channels_last"] is facts["channels_last"]
    torch.testing.assert_close(result.step_losses, ref.step_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _toy_student():
    from kdlab.models import build_model
    torch.manual_seed(7)
    return build_model("cnn", (1, 8, 8), 5, {"channels": [4, 8]})


def test_cached_logit_pass_runs_the_teacher_in_channels_last_and_hands_it_back():
    """``auto`` with a convolutional teacher: its one pass over the training set (cached logits) runs
    channels_last, the logits match the standard layout's, and the teacher comes back as it was given."""
    from kdlab.teacher import FrozenTeacher
    from tests.toy_signals import toy_teacher

    data = _toy_cnn_data()
    teacher = toy_teacher()
    given = {k: v.clone() for k, v in teacher.state_dict().items()}
    layouts = []
    conv = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 6 -> 8 channels
    conv.register_forward_hook(lambda m, i, o: layouts.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        reference = teacher.eval()(data.train.x)
    layouts.clear()
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    with FrozenTeacher(teacher) as frozen:
        trainer = build_trainer(mlp, KD("hinton", 4.0, 0.3, 0.7), data, TrainConfig(epochs=1, batch_size=16), seed=0,
                                teacher=frozen)
        facts = trainer.run_facts()
        torch.testing.assert_close(trainer.cached_logits, reference, rtol=1e-4, atol=1e-5)
        trainer.fit()
    assert layouts and all(layouts)
    assert facts["channels_last"] is False and facts["teacher_channels_last"] is True  # the MLP student keeps its layout
    assert facts["step"] == "autograd-free chain"
    for name, p in teacher.named_parameters():
        assert p.is_contiguous(), name
        assert torch.equal(p, given[name]), name
