"""FitNets and attention transfer through the one trainer: hooks on unmodified models, adapters
built from observed shapes, trained with the student, saved with the method's state."""

import copy

import pytest
import torch
import torch.nn.functional as F

from kdlab.recipes import load_recipe
from kdlab.errors import ConfigError
from kdlab.methods import METHODS, Batch, Outputs
from kdlab.methods.attention import ATParams, AttentionTransfer, attention_map
from kdlab.methods.fitnets import FitNets, FitNetsParams
from kdlab.pipeline import build_role_model
from kdlab.teacher import FrozenTeacher
from kdlab.train.build import build_trainer

MLP = ["teacher.model.hidden=[32]", "student.model.hidden=[12]", "student.train.epochs=2"]
CNN = ["teacher.model={name: cnn, channels: [8, 16]}", "student.model={name: cnn, channels: [4, 4]}", "student.train.epochs=2"]


def _models(overrides, data):
    recipe = load_recipe("digits-mlp", overrides)
    teacher = build_role_model(recipe, "teacher", data)
    return recipe, teacher, build_role_model(recipe, "student", data)


def test_fitnets_step_equals_the_formula_written_out(digits):
    recipe, teacher, student = _models(MLP, digits)
    method = FitNets(FitNetsParams({"net.1": "net.1"}, weight=3.0), "hinton", 2.0, 0.3, 0.7)
    reference = copy.deepcopy(student)
    frozen = FrozenTeacher(teacher)
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=1, teacher=frozen)
    adapter = method.adapters.adapters["net/1>net/1"]
    assert trainer.fast is None and trainer.cached_logits is None  # features: the teacher runs online
    assert any(p is adapter.linear.weight for p in trainer.trainable_parameters()) if hasattr(adapter, "linear") else True
    # one step by hand, with a copy of the adapter built by the probe
    adapter_ref = copy.deepcopy(adapter)
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x, y = digits.train.x[idx], digits.train.y[idx]
    h_s = reference.net[1](reference.net[0](x.flatten(1)))
    s = reference.net[2](h_s)
    with torch.no_grad():
        h_t = teacher.net[1](teacher.net[0](x.flatten(1))).clone()
        t = teacher(x)
    kd = F.kl_div(F.log_softmax(s / 2, 1), F.log_softmax(t / 2, 1), reduction="batchmean", log_target=True) * 4
    expected = 0.3 * F.cross_entropy(s, y) + 0.7 * kd + 3.0 * F.mse_loss(adapter_ref(h_s, h_t)[0], h_t)
    row = trainer.train_epoch()[0]
    assert float(row[0]) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(row[3]) == pytest.approx(float(F.mse_loss(adapter_ref(h_s, h_t)[0], h_t).detach()), rel=1e-5)


def test_fitnets_trains_adapters_not_the_teacher_and_hands_the_teacher_back(digits):
    recipe, teacher, student = _models(MLP, digits)
    teacher.train()
    before = copy.deepcopy(teacher.state_dict())
    method = FitNets(FitNetsParams({"net.1": "net.1"}, weight=10.0, hint_epochs=1), "hinton", 3.0, 0.5, 0.5)
    with FrozenTeacher(teacher) as frozen:
        trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=frozen)
        adapter_before = copy.deepcopy(method.adapters.state_dict())
        (result,) = trainer.fit()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # handed back as given
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert any(not torch.equal(v, adapter_before[k]) for k, v in method.adapters.state_dict().items() if torch.is_tensor(v))
    first, second = result.history
    assert (first["stage"], first["hard_weight"], first["soft_weight"]) == (1, 0.0, 0.0)  # hint-only stage
    assert (second["stage"], second["hard_weight"]) == (2, 0.5)
    assert "loss_hint" in first and first["hint_weight"] == 10.0
    assert not student._forward_hooks and not teacher._forward_hooks  # no hook left on either model
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_method_state_with_adapters_resumes(digits):
    recipe, teacher, student = _models(MLP, digits)
    method = FitNets(FitNetsParams({"net.1": "net.1"}), "hinton", 3.0, 0.5, 0.5)
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    state = trainer.state_dict()
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = FitNets(FitNetsParams({"net.1": "net.1"}), "hinton", 3.0, 0.5, 0.5)
    fresh.load_state_dict(loaded["method_state"])
    for k, v in method.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, fresh.state_dict()[k])


def test_attention_transfer_on_cnns_equals_the_reference_expression(digits):
    recipe, teacher, student = _models(CNN, digits)
    method = AttentionTransfer(ATParams({"features.2": "features.2", "features.5": "features.5"}), "hinton", 4.0, 0.5, 0.5)
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    idx = next(iter(copy.deepcopy(trainer.indexer).epoch()))
    x = digits.train.x[idx]
    ref_s, ref_t = copy.deepcopy(student), copy.deepcopy(teacher)

    def at(f):  # the authors' utils.py, verbatim
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    fs = [ref_s.features[:3](x), ref_s.features(x)]
    with torch.no_grad():
        ft = [ref_t.features[:3](x), ref_t.features(x)]
    expected_at = sum((at(a) - at(b)).pow(2).mean() for a, b in zip(fs, ft))
    row = trainer.train_epoch()[0]
    assert float(row[3]) == pytest.approx(float(expected_at.detach()), rel=1e-5)
    assert trainer.method.term_weights()["at"] == 1000.0


def test_bad_pairs_are_one_line_errors(digits):
    recipe, teacher, student = _models(MLP, digits)
    with pytest.raises(ConfigError, match="closest"):
        build_trainer(student, FitNets(FitNetsParams({"net.7": "net.1"})), digits, recipe.student.train, teacher=FrozenTeacher(teacher))
    with pytest.raises(ConfigError, match="needs layer pairs"):
        FitNets(FitNetsParams({}))
    with pytest.raises(ConfigError, match=r"needs \(B, C, H, W\) feature maps"):  # AT needs maps, an MLP gives vectors
        build_trainer(student, AttentionTransfer(ATParams({"net.1": "net.1"})), digits, recipe.student.train, teacher=FrozenTeacher(teacher))
    assert {"fitnets", "at"} <= set(METHODS.names())


CNN3 = ["teacher.model={name: cnn, channels: [8, 8, 16]}", "student.model={name: cnn, channels: [4, 4, 4]}",
        "student.train.epochs=1", "student.train.batch_size=718"]


def test_fitnets_pooled_pair_trains_through_a_trailing_batch_of_one_sample(digits):
    # features.8 is 1x1 after three poolings of 8x8 digits: a conv1x1+BN adapter on (B, C, 1, 1); 1437 = 2·718 + 1
    recipe, teacher, student = _models(CNN3, digits)
    method = FitNets(FitNetsParams({"features.8": "features.8"}), "hinton", 4.0, 0.5, 0.5)
    trainer = build_trainer(student, method, digits, recipe.student.train, seed=0, teacher=FrozenTeacher(teacher))
    assert method.adapters.describe() == ["features.8 -> features.8: conv1x1+bn 4->16"]
    bn = method.adapters.adapters["features/8>features/8"].proj[1]
    tracked = int(bn.num_batches_tracked)
    rows = trainer.train_epoch()
    assert rows.shape[0] == 3 and torch.isfinite(rows).all()  # the one-sample batch was trained on
    assert int(bn.num_batches_tracked) == tracked + 2  # the two full batches updated the running statistics


def test_fitnets_forward_on_a_one_sample_pooled_batch(digits):
    method = FitNets(FitNetsParams({"s": "t"}), "hinton", 4.0, 0.5, 0.5)
    batch = lambda n: Batch(torch.zeros(n, 1), torch.arange(n) % 10, None)
    out = lambda n, c: Outputs(torch.randn(n, 10), {"s" if c == 4 else "t": torch.randn(n, c, 1, 1)})
    method.train()
    method(batch(3), out(3, 4), out(3, 16))
    terms = method(batch(1), out(1, 4), out(1, 16))
    assert torch.isfinite(terms["hint"])
