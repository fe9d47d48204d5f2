"""Gradient accumulation equals the large batch; warm-up LRs; clipping with both; exact resume."""

import copy

import pytest
import torch

from kdlab.config import TrainConfig
from kdlab.methods import CE, KD
from kdlab.pipeline import build_role_model, prepare_data
from kdlab.recipes import load_recipe
from kdlab.train.callbacks import Callback
from kdlab.train.build import build_trainer


@pytest.fixture(scope="module")
def setup():
    recipe = load_recipe("digits-mlp", ["student.model.hidden=[16]"])
    data = prepare_data(recipe)
    torch.manual_seed(0)
    logits = torch.randn(len(data.train), data.num_classes) * 3  # any teacher signal will do
    return recipe, data, logits


def _cfg(**kw):
    base = dict(epochs=1, batch_size=128, eval_batch_size=512)
    base.update(kw)
    cfg = TrainConfig(**{k: v for k, v in base.items() if k not in ("opt", "lr")})
    cfg.optimizer.name, cfg.optimizer.lr = kw.get("opt", "sgd"), kw.get("lr", 0.1)
    return cfg


def _train(setup, cfg, model=None, callbacks=(), method=None):
    recipe, data, logits = setup
    model = model if model is not None else build_role_model(recipe, "student", data)  # no BatchNorm: an MLP
    trainer = build_trainer(model, method or KD("hinton", 4.0, 0.5, 0.5), data, cfg, seed=3, teacher_logits=logits, callbacks=callbacks)
    trainer.fit()
    return model, trainer


def _assert_same_params(a, b, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_accumulating_2x64_equals_one_step_of_128(setup, clip, opt):
    """Over a whole epoch (the last, short group included), with and without active clipping."""
    n = len(setup[1].train)
    assert n % 128 not in (0, 64)  # the epoch ends with a short group, which must be rescaled too
    big, t_big = _train(setup, _cfg(batch_size=128, grad_clip=clip, opt=opt, lr=0.1 if opt == "sgd" else 0.01))
    small, t_small = _train(setup, _cfg(batch_size=64, accumulate_steps=2, grad_clip=clip, opt=opt, lr=0.1 if opt == "sgd" else 0.01))
    assert t_big.fast is not None and t_small.fast is None  # accumulation uses the autograd path
    _assert_same_params(big, small)
    assert t_small.step_rows[0].shape[0] == 2 * t_big.step_rows[0].shape[0] - (1 if n % 128 <= 64 else 0)


def test_accumulation_steps_count(setup):
    """4 micro-batches per optimizer step: SGD momentum buffers see ceil(batches / 4) steps."""
    calls = []
    model, trainer = _train(setup, _cfg(batch_size=32, accumulate_steps=4), method=CE())
    opt = trainer.optimizer
    orig = opt.step
    opt.step = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    trainer.start_epoch, trainer.cfg = 1, _cfg(batch_size=32, accumulate_steps=4, epochs=1)
    trainer.train_epoch()
    batches = -(-len(setup[1].train) // 32)
    assert len(calls) == -(-batches // 4)


class _LRs(Callback):
    def __init__(self):
        self.lrs = []

    def on_epoch_end(self, trainer, epoch, records):
        self.lrs.append(records[0]["lr"])


@pytest.mark.parametrize("scheduler", ["constant", "cosine", "step"])
def test_warmup_lr_per_epoch_by_hand(setup, scheduler):
    import math

    cfg = _cfg(epochs=6, warmup_epochs=2, lr=0.3)
    cfg.scheduler.name, cfg.scheduler.step_size, cfg.scheduler.gamma = scheduler, 2, 0.5
    log = _LRs()
    _train(setup, cfg, method=CE(), callbacks=[log])
    lr = 0.3
    after = {"constant": [lr] * 4,
             "cosine": [lr * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)],  # cosine over the 4 epochs left
             "step": [lr, lr, lr * 0.5, lr * 0.5]}[scheduler]
    assert log.lrs == pytest.approx([lr / 3, 2 * lr / 3, *after])


class _Stop(Callback):
    def __init__(self, at):
        self.at, self.state = at, None

    def on_epoch_end(self, trainer, epoch, records):
        if epoch == self.at:
            self.state = (copy.deepcopy(trainer.model.state_dict()), copy.deepcopy(trainer.state_dict()))
            raise KeyboardInterrupt


def test_resume_is_exact_with_warmup_and_accumulation(setup):
    recipe, data, _ = setup
    cfg = _cfg(epochs=4, warmup_epochs=2, accumulate_steps=3, batch_size=32, opt="adam", lr=0.01, grad_clip=1.0)
    cfg.scheduler.name = "cosine"
    full_log = _LRs()
    full, _ = _train(setup, cfg, callbacks=[full_log])
    stop = _Stop(2)
    with pytest.raises(KeyboardInterrupt):
        _train(setup, cfg, callbacks=[stop])
    model = build_role_model(recipe, "student", data)
    model.load_state_dict(stop.state[0])
    log = _LRs()
    trainer = build_trainer(model, KD("hinton", 4.0, 0.5, 0.5), data, cfg, seed=3, teacher_logits=setup[2], callbacks=[log])
    trainer.load_state_dict(stop.state[1])
    trainer.fit()
    assert log.lrs == pytest.approx(full_log.lrs[2:])
    _assert_same_params(full, model, atol=0)
