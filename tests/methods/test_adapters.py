import io

import pytest
import torch
from torch import nn

from kdlab.errors import CheckpointError, ConfigError
from kdlab.methods.adapters import AdapterSet, ConvAdapter, LinearAdapter, PairAdapter, build_adapter, pair_key


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_identical_shapes_need_no_adapter():
    fs, ft = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4)
    adapter = build_adapter(fs.shape, ft.shape)
    assert type(adapter) is PairAdapter and n_params(adapter) == 0
    out_s, out_t = adapter(fs, ft)
    assert out_s is fs and out_t is ft


@pytest.mark.parametrize("s_shape,t_shape", [((4, 6), (4, 10)), ((4, 5, 6), (4, 5, 10))])
def test_vectors_and_sequences_get_a_linear_map_on_the_last_dim(s_shape, t_shape):
    torch.manual_seed(0)
    fs, ft = torch.randn(s_shape), torch.randn(t_shape)
    adapter = build_adapter(fs.shape, ft.shape)
    assert isinstance(adapter, LinearAdapter) and n_params(adapter) == 6 * 10 + 10
    out_s, out_t = adapter(fs, ft)
    w, b = adapter.proj.weight, adapter.proj.bias
    manual = torch.einsum("...i,oi->...o", fs, w) + b
    assert out_s.shape == ft.shape and torch.allclose(out_s, manual, atol=1e-6) and out_t is ft


def test_channel_mismatch_gets_a_bias_free_1x1_conv_then_batchnorm():
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 8, 5, 5), torch.randn(2, 16, 5, 5)
    adapter = build_adapter(fs.shape, ft.shape).eval()  # eval: BN uses its initial stats (0, 1)
    assert isinstance(adapter, ConvAdapter) and not adapter.pool_student and not adapter.pool_teacher
    conv, bn = adapter.proj
    assert conv.kernel_size == (1, 1) and conv.bias is None and isinstance(bn, nn.BatchNorm2d)
    out_s, out_t = adapter(fs, ft)
    manual = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], fs) / (1 + bn.eps) ** 0.5
    assert out_s.shape == ft.shape and torch.allclose(out_s, manual, atol=1e-6) and out_t is ft
    assert adapter.describe() == "conv1x1+bn 8->16"


def block_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // k, k, w // k, k).mean((3, 5))


def test_larger_student_map_is_average_pooled_to_the_teacher_size():
    fs, ft = torch.randn(2, 8, 14, 14), torch.randn(2, 8, 7, 7)
    adapter = build_adapter(fs.shape, ft.shape)
    assert adapter.pool_student and not adapter.pool_teacher and n_params(adapter) == 0
    out_s, out_t = adapter(fs, ft)
    assert torch.allclose(out_s, block_mean(fs, 2), atol=1e-6) and out_t is ft
    assert adapter.describe() == "pool student to 7x7"


def test_larger_teacher_map_is_pooled_too_and_the_student_projected():
    fs, ft = torch.randn(2, 4, 7, 7), torch.randn(2, 16, 14, 14)
    adapter = build_adapter(fs.shape, ft.shape)
    out_s, out_t = adapter(fs, ft)
    assert out_s.shape == out_t.shape == (2, 16, 7, 7)
    assert torch.allclose(out_t, block_mean(ft, 2), atol=1e-6)
    assert adapter.describe() == "conv1x1+bn 4->16, pool teacher to 7x7"


def test_crossed_spatial_sizes_pool_each_side_to_the_smaller_extent():
    fs, ft = torch.randn(2, 3, 8, 4), torch.randn(2, 3, 4, 8)
    out_s, out_t = build_adapter(fs.shape, ft.shape)(fs, ft)
    assert out_s.shape == out_t.shape == (2, 3, 4, 4)
    assert torch.allclose(out_s, fs.reshape(2, 3, 4, 2, 4).mean(3), atol=1e-6)


@pytest.mark.parametrize(
    "s_shape,t_shape,reason",
    [
        ((2, 16, 7, 7), (2, 128), "no adapter joins a 4-D and a 2-D output"),
        ((2, 16), (3, 16), "the batch sizes differ"),
        ((2, 5, 8), (2, 6, 8), "sequence lengths differ (5 vs 6)"),
        ((2, 3, 4, 4, 4), (2, 6, 4, 4, 4), "no adapter for 5-D outputs"),
    ],
)
def test_pairs_no_adapter_joins_are_one_line_naming_shapes_and_layers(s_shape, t_shape, reason):
    with pytest.raises(ConfigError) as err:
        build_adapter(s_shape, t_shape, "features.3", "layer2")
    message = str(err.value)
    assert "\n" not in message and reason in message
    assert f"student 'features.3' output {list(s_shape)}" in message
    assert f"teacher 'layer2' output {list(t_shape)}" in message


def test_adapters_are_created_on_the_features_device_and_dtype(monkeypatch):
    import kdlab.methods.adapters as module

    seen = []
    real = module.build_adapter
    monkeypatch.setattr(module, "build_adapter", lambda *a, **k: seen.append(a[4:6]) or real(*a, **k))
    adapters = AdapterSet()
    fs = torch.ones(2, 4, 6, 6, dtype=torch.float64)
    ft = torch.ones(2, 8, 3, 3, dtype=torch.float64)
    out_s, out_t = adapters("a.b", "c", fs, ft)
    assert seen == [(fs.device, torch.float64)]
    assert {p.dtype for p in adapters.parameters()} == {torch.float64}
    assert {b.dtype for b in adapters.buffers() if b.is_floating_point()} == {torch.float64}
    assert out_s.shape == out_t.shape == (2, 8, 3, 3) and out_s.dtype == torch.float64


@pytest.mark.parametrize("s_shape,t_shape", [((2, 4, 6, 6), (2, 8, 3, 3)), ((2, 3), (2, 5))])
def test_every_adapter_parameter_and_buffer_is_placed_where_asked(s_shape, t_shape):
    """The meta device stands in for a GPU (no forward: meta kernels are slow to load)."""
    adapter = build_adapter(s_shape, t_shape, device=torch.device("meta"), dtype=torch.float64)
    tensors = [*adapter.parameters(), *(b for b in adapter.buffers() if b.is_floating_point())]
    assert tensors and {(t.device.type, t.dtype) for t in tensors} == {("meta", torch.float64)}


def test_adapter_set_builds_each_pair_once_and_checks_later_shapes():
    adapters = AdapterSet()
    fs, ft = torch.randn(4, 6), torch.randn(4, 10)
    adapters("blocks.2.mlp", "fc", fs, ft)
    first = adapters.adapters[pair_key("blocks.2.mlp", "fc")]
    adapters("blocks.2.mlp", "fc", torch.randn(3, 6), torch.randn(3, 10))  # a smaller last batch is fine
    assert len(adapters) == 1 and adapters.adapters[pair_key("blocks.2.mlp", "fc")] is first
    assert "." not in pair_key("blocks.2.mlp", "fc") and pair_key("a.b", "c") != pair_key("a", "b.c")
    with pytest.raises(ConfigError, match=r"differ from the per-sample shapes \[6\] and \[10\]"):
        adapters("blocks.2.mlp", "fc", torch.randn(4, 7), torch.randn(4, 10))
    assert adapters.describe() == ["blocks.2.mlp -> fc: linear 6->10"]


def test_lock_refuses_a_late_adapter_that_the_optimizer_would_not_see():
    adapters = AdapterSet()
    adapters("s", "t", torch.randn(2, 3), torch.randn(2, 5))
    adapters.lock()
    adapters("s", "t", torch.randn(2, 3), torch.randn(2, 5))  # existing pairs still work
    with pytest.raises(RuntimeError, match="after lock"):
        adapters("s2", "t", torch.randn(2, 3), torch.randn(2, 5))


def test_gradients_reach_adapter_and_student_never_the_teacher():
    adapters = AdapterSet()
    fs = torch.randn(2, 4, 6, 6, requires_grad=True)
    ft = torch.randn(2, 8, 6, 6, requires_grad=True)
    out_s, out_t = adapters("s", "t", fs, ft.detach())
    (out_s - out_t).pow(2).mean().backward()
    assert fs.grad is not None and all(p.grad is not None for p in adapters.parameters())
    assert ft.grad is None


class Method(nn.Module):
    """A method owning adapters, as the Distiller will."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = AdapterSet()


def trained_method() -> Method:
    torch.manual_seed(0)
    method = Method()
    for _ in range(3):  # train-mode forwards move the BN running stats away from (0, 1)
        method.adapters("features.2", "layer1", torch.randn(4, 3, 8, 8), torch.randn(4, 6, 4, 4))
        method.adapters("fc_in", "fc", torch.randn(4, 5), torch.randn(4, 7))
    with torch.no_grad():  # and the weights away from their initialisation (an optimizer step would)
        for p in method.parameters():
            p.add_(torch.randn_like(p))
    return method.eval()


def saved(method: nn.Module) -> dict:
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def outputs(method: Method) -> list:
    torch.manual_seed(1)
    fs, ft = torch.randn(4, 3, 8, 8), torch.randn(4, 6, 4, 4)
    maps = method.adapters("features.2", "layer1", fs, ft)
    return [*maps, *method.adapters("fc_in", "fc", torch.ones(2, 5), torch.ones(2, 7))]


def test_state_dict_round_trip_into_adapters_built_from_the_same_shapes():
    method = trained_method()
    state = saved(method)
    assert any(key.endswith("running_mean") for key in state)
    fresh = Method()
    fresh.adapters.build("features.2", "layer1", (1, 3, 8, 8), (1, 6, 4, 4))
    fresh.adapters.build("fc_in", "fc", (1, 5), (1, 7))
    fresh.load_state_dict(state)
    for got, want in zip(outputs(fresh.eval()), outputs(method)):
        assert torch.equal(got, want)


def test_state_dict_round_trip_rebuilds_adapters_in_an_empty_set():
    method = trained_method()
    fresh = Method().eval()
    fresh.load_state_dict(saved(method))  # strict: every saved weight found a rebuilt adapter
    assert fresh.adapters.describe() == method.adapters.describe()
    assert not any(m.training for m in fresh.modules())  # rebuilt adapters follow the owner's mode
    for got, want in zip(outputs(fresh), outputs(method)):
        assert torch.equal(got, want)


def test_restore_keeps_the_saved_dtype():
    method = Method()
    method.adapters("s", "t", torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    fresh = Method()
    fresh.load_state_dict(saved(method))
    assert {p.dtype for p in fresh.parameters()} == {torch.float64}


def test_restoring_into_adapters_of_other_shapes_is_a_checkpoint_error():
    state = saved(trained_method())
    other = Method()
    other.adapters.build("fc_in", "fc", (1, 5), (1, 9))
    with pytest.raises(CheckpointError) as err:
        other.load_state_dict(state)
    assert "\n" not in str(err.value) and "[5] -> [7]" in str(err.value) and "[5] -> [9]" in str(err.value)


def test_unreadable_adapter_description_is_a_checkpoint_error():
    state = saved(trained_method())
    state["adapters._extra_state"]["pairs"]["fc_in>fc"]["dtype"] = "load"
    with pytest.raises(CheckpointError, match="unreadable description"):
        Method().load_state_dict(state)


def test_batchnorm_on_one_value_per_channel_uses_running_statistics_instead_of_raising():
    # a pooled (1, C, 1, 1) pair on a trailing one-sample batch: nn.BatchNorm2d raised ValueError in training mode
    torch.manual_seed(0)
    adapter = build_adapter((4, 3, 1, 1), (4, 5, 1, 1))
    conv, bn = adapter.proj
    adapter(torch.randn(4, 3, 1, 1), torch.randn(4, 5, 1, 1))  # a full batch: batch statistics, running ones move
    assert bn.num_batches_tracked == 1 and not torch.equal(bn.running_mean, torch.zeros(5))
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(1, 3, 1, 1, requires_grad=True)
    out, _ = adapter(x, torch.randn(1, 5, 1, 1))
    z = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    manual = (z - mean.view(1, 5, 1, 1)) / (var.view(1, 5, 1, 1) + bn.eps).sqrt() * bn.weight.view(1, 5, 1, 1) + bn.bias.view(1, 5, 1, 1)
    torch.testing.assert_close(out, manual)  # normalised by the running statistics, as in eval mode
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var) and bn.num_batches_tracked == 1
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and conv.weight.grad is not None and bn.weight.grad is not None
    assert bn.training  # still training: the next full batch uses batch statistics again
    adapter(torch.randn(2, 3, 1, 1), torch.randn(2, 5, 1, 1))
    assert bn.num_batches_tracked == 2
