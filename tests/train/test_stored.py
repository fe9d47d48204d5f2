"""Training from the stored teacher signal equals training with the teacher online on the same views.

Same views, same seeds: the store (float32) and the online teacher give the same losses and
weights to float tolerance; with bfloat16 feature storage, to the tolerance 8 mantissa bits imply.
"""

import functools

import pytest
import torch

from kdlab.config import DistillConfig, TrainConfig
from kdlab.data import DatasetSplits
from kdlab.data.augment import AugmentConfig
from kdlab.data.views import ReplayViews
from kdlab.errors import ConfigError
from kdlab.losses.topk import compress_logits, expand_logits
from kdlab.methods.registry import build_method
from kdlab.models import build_model
from kdlab.teacher import FrozenTeacher
from kdlab.teacher_cache.signals import signal_store
from kdlab.train.build import build_trainer
from kdlab.train.stored import SignalsPlan, TeacherSignalsConfig

from tests.toy_signals import toy_data, toy_teacher


METHODS = {
    "hinton": ("hinton", None),
    "fitnets": ("fitnets", {"pairs": {"features.5": "features.5"}, "weight": 1.0}),
    "at": ("at", {"pairs": {"features.2": "features.2"}}),
    "rkd": ("rkd", None),
    "crd": ("crd", {"feat_dim": 8, "negatives": 16}),
}


def _run(tmp_path, name, augment, store, dtype="float32", views=3, epochs=2, teacher=None, **plan_options):
    data = toy_data()
    method_name, params = METHODS[name]
    method = build_method(method_name, DistillConfig(method=method_name), params)
    torch.manual_seed(2)
    student = build_model("cnn", (1, 8, 8), 5, {"channels": [4, 8]})
    replay = ReplayViews(augment, seed=11, views=views, num_classes=5)
    plan = SignalsPlan(replay, functools.partial(signal_store, tmp_path, log=lambda m: None), feature_dtype=dtype,
                       explicit=True, store=store, **plan_options)
    cfg = TrainConfig(epochs=epochs, batch_size=16)
    teacher = FrozenTeacher(teacher if teacher is not None else toy_teacher())
    trainer = build_trainer(student, method, data, cfg, seed=0, teacher=teacher, signals=plan)
    results = trainer.fit()
    facts = trainer.run_facts()
    trainer.close()
    losses = [{k: v for k, v in h.items() if k.startswith("loss_") or k == "test_acc"} for h in results[0].history]
    return losses, {k: v.detach().clone() for k, v in student.state_dict().items()}, facts


CROP_FLIP = AugmentConfig(crop=2, flip=True)


@pytest.mark.parametrize("name,augment", [
    ("hinton", CROP_FLIP), ("hinton", AugmentConfig(mixup=0.4)), ("fitnets", CROP_FLIP), ("at", CROP_FLIP),
    ("rkd", CROP_FLIP), ("crd", CROP_FLIP),
])
def test_store_equals_online_teacher_on_the_same_views(tmp_path, name, augment):
    online_losses, online_w, online_facts = _run(tmp_path, name, augment, store=False)
    stored_losses, stored_w, facts = _run(tmp_path, name, augment, store=True)
    assert online_facts["teacher_source"] == "online"
    assert facts["teacher_source"] == "stored signals"
    for a, b in zip(stored_losses, online_losses):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    for k in online_w:
        assert torch.allclose(stored_w[k], online_w[k], rtol=1e-4, atol=1e-5), k


def test_bfloat16_features_stay_within_what_8_mantissa_bits_imply(tmp_path):
    """FitNets' hint reads the teacher feature; stored in bf16 each value moves by <= 2^-8 relative,
    so the first epoch's loss moves by well under 1%."""
    online, _, _ = _run(tmp_path, "fitnets", CROP_FLIP, store=False, epochs=1)
    stored, _, facts = _run(tmp_path, "fitnets", CROP_FLIP, store=True, dtype="bfloat16", epochs=1)
    assert facts["teacher_signals"]["signals"]["feature:features.5"]["dtype"] == "bfloat16"
    assert stored[0]["loss_hint"] == pytest.approx(online[0]["loss_hint"], rel=1e-2)
    assert stored[0]["loss_hint"] != online[0]["loss_hint"]  # bf16 storage did round the feature


def test_the_store_is_reused_by_a_second_run_and_recorded(tmp_path):
    _run(tmp_path, "at", CROP_FLIP, store=True, epochs=1)
    _, _, facts = _run(tmp_path, "at", CROP_FLIP, store=True, epochs=1)
    sig = facts["teacher_signals"]
    assert sig["computed_here"] is False and sig["views"] == 3
    assert sig["signals"]["feature:features.2"]["shape"] == [4, 4]  # AT stores the energy map, not 6×4×4
    assert "stored signals" == facts["teacher_source"] and "reused" in facts["teacher_source_reason"]


class _TopKTeacher(torch.nn.Module):
    """The teacher with its logits replaced by what a top-k store holds, expanded (run online)."""

    def __init__(self, model, k, temperature):
        super().__init__()
        self.model, self.k, self.temperature = model, k, temperature

    def forward(self, x):
        z = self.model(x)
        return expand_logits(*compress_logits(z, self.k, self.temperature), z.shape[-1])


def test_a_top_k_store_trains_as_the_online_teacher_with_top_k_logits(tmp_path):
    """A top-2 store of 5 classes at the method's T: the same losses and weights as the online
    teacher whose logits are compressed and expanded per batch (the loss the store implies)."""
    T = DistillConfig().temperature
    online, online_w, _ = _run(tmp_path, "hinton", CROP_FLIP, store=False, teacher=_TopKTeacher(toy_teacher(), 2, T))
    full, _, _ = _run(tmp_path, "hinton", CROP_FLIP, store=True)
    stored, stored_w, facts = _run(tmp_path, "hinton", CROP_FLIP, store=True, top_k=2)
    sig = facts["teacher_signals"]["signals"]
    assert "logits" not in sig and sig["logits_top_index"] == {"shape": [2], "dtype": "int32"}
    assert sig["logits_top_values"]["shape"] == [2] and sig["logits_rest"]["shape"] == [1]
    assert "top-2 logits" in facts["teacher_source_reason"]
    for a, b in zip(stored, online):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    for k in online_w:
        assert torch.allclose(stored_w[k], online_w[k], rtol=1e-4, atol=1e-5), k
    assert stored[0]["loss_soft"] != pytest.approx(full[0]["loss_soft"], rel=1e-6)  # the compression is real


def test_a_top_k_store_is_refused_for_a_method_without_temperature(tmp_path):
    class NoTemperature(type(build_method("hinton", DistillConfig(), None))):
        def configured_temperature(self):
            return None

    torch.manual_seed(2)
    student = build_model("cnn", (1, 8, 8), 5, {"channels": [4, 8]})
    plan = SignalsPlan(ReplayViews(CROP_FLIP, seed=11, views=2, num_classes=5),
                       functools.partial(signal_store, tmp_path, log=lambda m: None), explicit=True, top_k=2)
    with pytest.raises(ConfigError, match="top_k"):
        build_trainer(student, NoTemperature(temperature=4.0), toy_data(), TrainConfig(epochs=1, batch_size=16), seed=0,
                      teacher=FrozenTeacher(toy_teacher()), signals=plan)


def test_top_k_auto_keeps_every_logit_up_to_1000_classes():
    auto = TeacherSignalsConfig.from_dict(None)
    assert auto.top_k_for(1000) is None and auto.top_k_for(1001) == 10
    assert TeacherSignalsConfig.from_dict({"top_k": "all"}).top_k_for(5000) is None
    assert TeacherSignalsConfig.from_dict({"top_k": 3}).top_k_for(10) == 3
    with pytest.raises(ConfigError, match="1 to 9 of the 10 classes"):
        TeacherSignalsConfig.from_dict({"top_k": 10}).top_k_for(10)


def test_a_bf16_store_stays_within_bf16_tolerance_and_is_recorded(tmp_path):
    """precision bf16: the teacher computes the store under bf16 autocast (native or emulated);
    its logits carry bf16 rounding, so the losses agree with the fp32 teacher's to ~1%."""
    online, _, _ = _run(tmp_path, "hinton", CROP_FLIP, store=False, epochs=1)
    stored, _, facts = _run(tmp_path, "hinton", CROP_FLIP, store=True, epochs=1, precision="bf16")
    assert "bfloat16" in facts["teacher_source_reason"]
    assert stored[0]["loss_soft"] == pytest.approx(online[0]["loss_soft"], rel=2e-2)
    assert stored[0]["loss_soft"] != online[0]["loss_soft"]


def test_teacher_signals_section_is_checked_in_one_line():
    assert TeacherSignalsConfig.from_dict({"views": 4}).views_for(True, 10) == 4
    assert TeacherSignalsConfig.from_dict({"views": 16}).views_for(True, 10) == 10
    assert TeacherSignalsConfig.from_dict(None).views_for(False, 10) == 1
    for bad, match in (({"views": 0}, "views"), ({"dtype": "int8"}, "dtype"), ({"max_gb": -1}, "max_gb"),
                       ({"view": 3}, "unknown key"), ({"top_k": 0}, "top_k"), ({"top_k": "some"}, "top_k"),
                       ({"precision": "fp16"}, "precision")):
        with pytest.raises(ConfigError, match=match):
            TeacherSignalsConfig.from_dict(bad)


def test_another_share_of_the_training_set_gets_its_own_store(tmp_path):
    """The store's key holds the training tensors the run reads, not only the dataset it came from:
    a caller training on images 0-23 and then 24-47 (same dataset fingerprint) gets two stores."""
    full = toy_data()
    full.info["fingerprint"] = "the same dataset"
    facts = []
    for part in (torch.arange(0, 24), torch.arange(24, 48), torch.arange(0, 24)):
        data = DatasetSplits("toy", full.train.subset(part), full.test, full.classes, info=dict(full.info))
        torch.manual_seed(2)
        student = build_model("cnn", (1, 8, 8), 5, {"channels": [4, 8]})
        plan = SignalsPlan(ReplayViews(CROP_FLIP, seed=11, views=2, num_classes=5),
                           functools.partial(signal_store, tmp_path, log=lambda m: None), explicit=True)
        trainer = build_trainer(student, build_method("hinton", DistillConfig(), None), data,
                                TrainConfig(epochs=1, batch_size=8), seed=0, teacher=FrozenTeacher(toy_teacher()), signals=plan)
        facts.append(trainer.run_facts()["teacher_signals"])
        trainer.close()
    assert [f["computed_here"] for f in facts] == [True, True, False]
    assert facts[0]["path"] != facts[1]["path"] and facts[2]["path"] == facts[0]["path"]
