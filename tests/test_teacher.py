import torch
from torch import nn

from kdlab.teacher import FrozenTeacher, PrecomputedTeacherLogits


def make_teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_teacher_stays_in_eval_mode_and_frozen():
    frozen = FrozenTeacher(make_teacher())
    parent = nn.ModuleDict({"teacher": frozen, "student": nn.Linear(4, 3)})
    parent.train()  # what a training loop does to everything it owns
    assert not frozen.training and not frozen.model.training
    assert all(not p.requires_grad for p in frozen.parameters())
    x = torch.randn(5, 4)
    out = frozen(x)
    assert not out.requires_grad
    assert torch.equal(out, frozen(x))  # no dropout noise


def test_inner_model_flipped_to_train_is_corrected():
    frozen = FrozenTeacher(make_teacher())
    frozen.model.train()
    x = torch.randn(5, 4)
    assert torch.equal(frozen(x), frozen(x))
    assert not frozen.model.training


def test_cached_logits_computed_once_and_match_forward():
    model = make_teacher()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    frozen = FrozenTeacher(model)
    x = torch.randn(50, 4)
    cache = PrecomputedTeacherLogits(frozen.logits_for(x, batch_size=20))
    assert calls == [20, 20, 10]
    idx = torch.tensor([3, 7, 49])
    torch.testing.assert_close(cache(idx, x[idx]), frozen(x[idx]))
    for _ in range(5):
        cache(idx, x[idx])
    assert len(calls) == 4  # only the comparison forward above, never the cache lookups


def test_release_hands_the_teacher_back_as_it_was_given():
    model = make_teacher()
    model.train()
    model[0].weight.requires_grad_(False)  # a user's partly frozen model
    model[3].eval()                          # ...with one submodule in eval mode
    modes = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with FrozenTeacher(model) as frozen:
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        frozen(torch.randn(2, 4))
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
