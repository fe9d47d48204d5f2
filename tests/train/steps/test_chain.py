"""ChainStep: a Linear/ReLU chain's training step without autograd gives autograd's gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlab.train.steps.chain as chain
from kdlab.config import TrainConfig
from kdlab.methods import KD
from kdlab.models import build_model
from kdlab.train.steps.chain import ChainStep
from kdlab.train.build import build_trainer


def _cross_entropy(y):
    def grad_of_logits(logits):
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_()
            loss = F.cross_entropy(leaf, y)
            loss.backward()
        return loss.detach(), leaf.grad
    return grad_of_logits


@pytest.mark.parametrize("model", [
    build_model("mlp", (1, 8, 8), 10, {"hidden": [12, 7]}),
    nn.Sequential(nn.Flatten(), nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 5, bias=False), nn.Linear(5, 10)),
])
def test_gradients_equal_autograd_exactly(model):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    x[:, :, :2] = -5.0  # some ReLUs are off for whole columns
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    value = ChainStep.of(model).step(x, _cross_entropy(y))
    assert torch.equal(value, loss.detach())
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, expected[name]), name  # bit for bit: the same matmuls, same operands


def test_only_plain_trainable_chains():
    assert ChainStep.of(build_model("cnn", (1, 8, 8), 10, {"channels": [2, 3]})) is None
    assert ChainStep.of(build_model("mlp", (1, 8, 8), 10, {"hidden": [8], "dropout": 0.5})) is None
    frozen = build_model("mlp", (1, 8, 8), 10, {"hidden": [8]})
    frozen.net[0].weight.requires_grad_(False)  # autograd would leave its grad None
    assert ChainStep.of(frozen) is None
    hooked = build_model("mlp", (1, 8, 8), 10, {"hidden": [8]})
    hooked.net[0].register_forward_hook(lambda m, i, o: None)  # a user's hook must run
    assert ChainStep.of(hooked) is None


def test_trainer_runs_equal_with_and_without_autograd(digits, monkeypatch):
    """The closed-form KD step on an MLP: the chain path and autograd give the same run."""
    cfg = TrainConfig(epochs=2, batch_size=64)
    teacher_logits = torch.randn(len(digits.train), digits.num_classes) * 3
    runs = []
    for use_chain in (True, False):
        if not use_chain:
            monkeypatch.setattr(chain.ChainStep, "of", staticmethod(lambda model: None))
        torch.manual_seed(0)
        student = build_model("mlp", (1, 8, 8), 10, {"hidden": [16, 16]})
        trainer = build_trainer(student, KD(temperature=3.0), digits, cfg, seed=0, teacher_logits=teacher_logits)
        assert trainer.run_facts()["autograd_free_steps"] is use_chain and trainer.fast is not None
        (result,) = trainer.fit()
        runs.append((student.state_dict(), [r["loss_total"] for r in result.history]))
    (chained, losses), (plain, plain_losses) = runs
    assert losses == plain_losses
    for k in plain:
        assert torch.equal(chained[k], plain[k]), k


def test_native_relu_backward_and_its_public_fallback_agree():
    """The ATen kernel and the masked_fill fallback give identical gradients, zeros included."""
    torch.manual_seed(1)
    out = torch.randn(64, 9).relu()
    out[:, 3] = 0.0
    grad = torch.randn(64, 9)
    native = chain.relu_backward(grad.clone(), out)
    fallback = chain._masked_relu_backward(grad.clone(), out)
    assert torch.equal(native, fallback)
    assert torch.count_nonzero(native[:, 3]) == 0


def test_chain_uses_the_fallback_when_the_native_kernel_is_missing(monkeypatch):
    monkeypatch.setattr(torch.ops, "aten", object())  # a build without aten ops exposed
    assert chain._native_relu_backward() is chain._masked_relu_backward
