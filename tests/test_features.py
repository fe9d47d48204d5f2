import copy
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import ConfigError
from kdlab.features import FeatureTap, first_tensor, format_layer_table, layer_table, resolve_module
from kdlab.models import build_model
from kdlab.teacher import FrozenTeacher


class Block(nn.Module):
    """Residual block written like torchvision's BasicBlock (``out += identity`` in place)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin, stride) != (cout, 1) else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.layer3 = Block(16, 32, 2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x, return_features: bool = False):
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        logits = self.fc(f3.mean((2, 3)))
        return (logits, [f1, f2, f3]) if return_features else logits


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_tap_returns_exactly_what_the_model_computes_for_those_layers():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTap(model, ["layer1", "layer2", "layer3"]) as tap:
        logits = model(x)
        tapped = tap.outputs()
    ref_logits, explicit = model(x, return_features=True)
    assert torch.equal(logits, ref_logits)
    assert list(tapped) == ["layer1", "layer2", "layer3"]
    for got, want in zip(tapped.values(), explicit):
        assert torch.equal(got, want)
    assert [tuple(t.shape) for t in tapped.values()] == [(2, 8, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2)]


def test_tap_on_the_builtin_cnn_and_mlp_matches_a_manual_forward():
    torch.manual_seed(0)
    cnn = build_model("cnn", (1, 28, 28), 10, {"channels": [8, 16]})
    x = torch.randn(3, 1, 28, 28)
    with FeatureTap(cnn, ["features.2", "features"]) as tap:
        cnn(x)
        conv = cnn.features[0]
        assert torch.equal(tap["features.2"], F.max_pool2d(F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)), 2))
        assert torch.equal(tap["features"], cnn.features(x))
    mlp = build_model("mlp", (1, 28, 28), 10, {"hidden": [20, 20]})
    with FeatureTap(mlp, ["net.3"]) as tap:
        mlp(x)
        first, second = mlp.net[0], mlp.net[2]
        manual = F.relu(second(F.relu(first(x.flatten(1)))))
        assert torch.allclose(tap["net.3"], manual)


@pytest.mark.parametrize(
    "model,name,fix",
    [
        (build_model("cnn", (1, 28, 28), 10, {"channels": [8, 16]}), "features.0", "tap 'features.1' instead"),
        (TinyResNet(), "layer1.bn2", "tap the enclosing 'layer1' instead"),
    ],
)
def test_output_overwritten_in_place_later_is_refused_with_the_fix(model, name, fix):
    """ReLU(inplace=True) after a conv, or ``out += identity`` after a BN, changes the stored tensor."""
    x = torch.randn(2, *((1, 28, 28) if name.startswith("features") else (3, 8, 8)))
    with FeatureTap(model, [name], role="student") as tap:
        model(x)
        with pytest.raises(ConfigError) as err:
            tap[name]
    message = str(err.value)
    assert "\n" not in message and "in place" in message and fix in message and message.startswith("student")


def test_unknown_module_name_lists_the_closest_names_on_one_line():
    with pytest.raises(ConfigError) as err:
        FeatureTap(TinyResNet(), ["layer5"], role="teacher")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("teacher has no module 'layer5'; closest: ")
    closest = message.split("closest: ")[1].split(" (")[0].split(", ")
    assert closest and set(closest) <= {"layer1", "layer2", "layer3"}
    assert message.endswith("(see kdlab layers RECIPE --role teacher)")


def test_name_without_close_match_or_naming_a_parameter_is_refused():
    model = TinyResNet()
    with pytest.raises(ConfigError, match="top-level modules: stem, layer1, layer2, layer3, fc"):
        resolve_module(model, "zzz", role="student")
    with pytest.raises(ConfigError, match="has no module 'layer1.conv1.weight'"):
        resolve_module(model, "layer1.conv1.weight", role="student")
    assert all_hooks(model) == 0


def test_remove_leaves_no_hook_and_stops_recording():
    model = TinyResNet()
    before = model(torch.ones(1, 3, 8, 8))
    tap = FeatureTap(model, ["layer1", "layer2.conv1", "fc"])
    assert all_hooks(model) == 4  # three forward hooks + the clearing pre-hook on the root
    model(torch.ones(1, 3, 8, 8))
    tap.remove()
    tap.remove()  # idempotent
    assert not tap.active and all_hooks(model) == 0
    assert len(model._forward_hooks) == 0 and len(model._forward_pre_hooks) == 0
    assert torch.equal(model(torch.ones(1, 3, 8, 8)), before)
    with pytest.raises(ConfigError, match="did not run"):
        tap["layer1"]


def test_context_manager_removes_hooks_even_when_the_body_fails():
    model = TinyResNet()
    with pytest.raises(ValueError):
        with FeatureTap(model, ["layer2"]):
            raise ValueError("boom")
    assert all_hooks(model) == 0


def test_each_forward_drops_the_previous_steps_features_and_graph():
    model = TinyResNet()
    tap = FeatureTap(model, ["layer2"])
    model(torch.randn(2, 3, 8, 8))
    first = weakref.ref(tap["layer2"])
    model(torch.randn(2, 3, 8, 8))
    gc.collect()
    assert first() is None  # nothing (tap, graph) keeps the old step's tensor alive
    tap.clear()
    with pytest.raises(ConfigError, match="did not run in the latest forward"):
        tap["layer2"]
    tap.remove()


def test_teacher_features_carry_no_grad_student_features_train_the_student():
    torch.manual_seed(0)
    teacher_model, student = TinyResNet(), TinyResNet()
    teacher = FrozenTeacher(teacher_model)
    x = torch.randn(2, 3, 8, 8)
    with FeatureTap(teacher_model, ["layer2"], "teacher") as t_tap, FeatureTap(student, ["layer2"], "student") as s_tap:
        teacher(x)
        student(x)
        ft, fs = t_tap["layer2"], s_tap["layer2"]
        assert not ft.requires_grad and ft.grad_fn is None
        (fs - ft).pow(2).mean().backward()
    before_tap = [student.stem.weight, student.layer1.conv1.weight, student.layer2.conv2.weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in before_tap)
    assert student.layer3.conv1.weight.grad is None and student.fc.weight.grad is None
    assert all(p.grad is None for p in teacher_model.parameters())


def test_teacher_under_no_grad_gives_plain_tensors_even_with_trainable_parameters():
    model = TinyResNet()
    assert all(p.requires_grad for p in model.parameters())
    with FeatureTap(model, ["layer3"]) as tap:
        with torch.no_grad():
            model(torch.randn(2, 3, 8, 8))
        assert not tap["layer3"].requires_grad


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.info = Info()
        self.head = DictOut()
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        self.info(out)
        return self.head(out)["mean"]


class Info(nn.Module):
    def forward(self, x):
        return None


class DictOut(nn.Module):
    def forward(self, x):
        return {"mean": x.mean(1), "scale": 2.0}


def test_tuple_outputs_give_the_first_tensor_and_non_tensors_are_refused():
    model = TupleOut()
    x = torch.randn(2, 5, 4)
    with FeatureTap(model, ["lstm", "info", "head", "unused"]) as tap:
        model(x)
        assert torch.equal(tap["lstm"], model.lstm(x)[0])
        assert torch.equal(tap["head"], model.lstm(x)[0].mean(1))
        with pytest.raises(ConfigError, match="returns NoneType, not a tensor"):
            tap["info"]
        with pytest.raises(ConfigError, match="'unused' did not run"):
            tap["unused"]
    assert first_tensor((None, 3, torch.ones(1))).shape == (1,)
    assert first_tensor({"a": 1, "b": torch.zeros(2)}).shape == (2,)
    assert first_tensor("text") is None


def test_a_deep_copy_of_a_tapped_model_neither_copies_nor_feeds_the_tap():
    model = TinyResNet()
    with FeatureTap(model, ["layer1"]) as tap:
        model(torch.randn(2, 3, 8, 8))
        kept = tap["layer1"]
        clone = copy.deepcopy(model)  # graph-carrying features are stored: must not break the copy
        clone(torch.randn(2, 3, 8, 8))
        assert tap["layer1"] is kept
    assert all_hooks(model) == 0


def test_layer_table_lists_every_module_with_its_output_and_restores_the_model():
    torch.manual_seed(0)
    model = TinyResNet().train()
    model.layer2.bn1.eval()  # a deliberately mixed mode must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    stats = model.layer1.bn1.running_mean.clone()
    rng = torch.get_rng_state()
    rows = layer_table(model, (3, 8, 8))
    assert torch.equal(model.layer1.bn1.running_mean, stats)  # probed in eval mode
    assert torch.equal(torch.get_rng_state(), rng) and all_hooks(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [r.name for r in rows] == [n for n, _ in model.named_modules() if n]
    by_name = {r.name: r for r in rows}
    _, explicit = model.eval()(torch.zeros(2, 3, 8, 8), return_features=True)
    assert by_name["layer2"].shape == tuple(explicit[1].shape) and by_name["layer2"].output == "[2, 16, 4, 4]"
    assert by_name["fc"].type == "Linear" and by_name["fc"].params == 32 * 5 + 5
    assert by_name["layer1"].params == sum(p.numel() for p in model.layer1.parameters())


def test_layer_table_describes_non_tensor_outputs_and_unused_modules():
    rows = {r.name: r for r in layer_table(TupleOut(), torch.zeros(2, 5, 4))}
    assert rows["lstm"].output == "([2, 5, 6], ([1, 2, 6], [1, 2, 6]))" and rows["lstm"].shape is None
    assert rows["info"].output == "None"
    assert rows["head"].output == "{mean: [2, 6], scale: float}"
    assert rows["unused"].output == "not run"


def test_layer_table_forward_failure_is_one_line_and_leaves_no_hook():
    model = build_model("cnn", (1, 28, 28), 10, {"channels": [8, 16]}).train()
    with pytest.raises(ConfigError) as err:
        layer_table(model, (3, 28, 28), role="student")
    message = str(err.value)
    assert "\n" not in message and message.startswith("student forward on an input of shape [2, 3, 28, 28]")
    assert all_hooks(model) == 0 and model.training


def test_format_layer_table_aligns_columns():
    rows = layer_table(build_model("cnn", (1, 28, 28), 10, {"channels": [64, 256]}), (1, 28, 28))
    lines = format_layer_table(rows).splitlines()
    assert lines[0].split() == ["module", "type", "output", "params"] and len(lines) == len(rows) + 1
    starts = {line.index(row.output) for line, row in zip(lines[1:], rows)}
    assert len(starts) == 1  # the output column starts at the same place on every line
    assert len({len(line) for line in lines}) == 1  # params right-aligned to the same edge
    assert "147,712" in lines[[r.name for r in rows].index("features.3") + 1]  # 64*256*9 + 256


def test_penultimate_names_the_last_linear_the_forward_runs_and_leaves_the_model_as_it_was():
    from kdlab.features import penultimate

    class HeadFirst(nn.Module):  # registered before its body: the forward decides
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 3)
            self.body = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5))

        def forward(self, x):
            return self.head(self.body(x))

    model = HeadFirst().train()
    assert penultimate(model, (5,)) == ("head", (2, 4))
    assert model.training and model.body[1].training
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert penultimate(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 5, 5)) is None
