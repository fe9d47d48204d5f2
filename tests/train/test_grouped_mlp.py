import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdlab.models import build_model
from kdlab.models.chain import linear_chain
from kdlab.train.grouped_mlp import GroupedMLP


def _students(make, n):
    torch.manual_seed(0)
    return [make().double() for _ in range(n)]  # float64: compare arithmetic, not rounding


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_model("mlp", (1, 8, 8), 10, {"hidden": [12, 7]}),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 9, bias=False), nn.ReLU(), nn.Linear(9, 10)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
    ],
)
def test_grouped_logits_and_gradients_equal_vmapped_functional_call(make):
    S, V, B = 3, 2, 5
    students = _students(make, S * V)  # seed-major: student s·V + v
    params, _ = stack_module_state(students)
    base = students[0]
    grouped = GroupedMLP(linear_chain(base), S, V)

    def one(p, x):
        return functional_call(base, (p, {}), (x,))

    grid = {k: p.view(S, V, *p.shape[1:]) for k, p in params.items()}
    x = torch.randn(S, B, 1, 8, 8, dtype=torch.float64)
    ref = vmap(vmap(one, in_dims=(0, None)), in_dims=(0, 0))(grid, x)
    got = grouped.per_seed(grid, x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for s in range(S):
        for v in range(V):
            torch.testing.assert_close(got[s, v], students[s * V + v](x[s]), rtol=1e-10, atol=1e-12)
    g_ref = torch.autograd.grad(ref.square().sum(), list(params.values()))
    g_got = torch.autograd.grad(grouped.per_seed(grid, x).square().sum(), list(params.values()))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    shared = torch.randn(7, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(grouped.shared(grid, shared), vmap(vmap(one, in_dims=(0, None)), in_dims=(0, None))(grid, shared), rtol=1e-10, atol=1e-12)


def test_only_plain_linear_relu_chains_are_grouped():
    assert linear_chain(build_model("mlp", (1, 8, 8), 10, {"hidden": [5]})) == [("net.0.weight", "net.0.bias", True), ("net.2.weight", "net.2.bias", False)]
    assert linear_chain(build_model("cnn", (1, 8, 8), 10, {"channels": [2, 3]})) is None
    assert linear_chain(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))) is None
    hooked = build_model("mlp", (1, 8, 8), 10, {"hidden": [5]})
    hooked.net[0].register_forward_hook(lambda m, i, o: None)
    assert linear_chain(hooked) is None  # a user's hook must run: vmapped path
