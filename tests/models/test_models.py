import pytest
import torch

from kdlab import ConfigError
from kdlab.models import build_model, count_parameters, model_params
from kdlab.models.dropout import FastDropout

MNIST = (1, 28, 28)


@pytest.mark.parametrize(
    "name,params,expected",
    [
        ("cnn", {"channels": [64, 256]}, 273_802),
        ("cnn", {"channels": [8, 16]}, 9_098),
        ("mlp", {"hidden": [1200, 1200], "dropout": 0.5}, 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10),
        ("mlp", {"hidden": [20, 20]}, 784 * 20 + 20 + 20 * 20 + 20 + 20 * 10 + 10),
    ],
)
def test_parameter_counts(name, params, expected):
    model = build_model(name, MNIST, 10, params)
    assert count_parameters(model) == expected
    assert model(torch.zeros(3, *MNIST)).shape == (3, 10)


def test_cnn_works_on_8x8_digits():
    assert build_model("cnn", (1, 8, 8), 10, {"channels": [8, 16]})(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_parameter_names_the_key():
    with pytest.raises(ConfigError, match=r"student.model.hiden: unknown parameter for model 'mlp'; accepted: hidden, dropout, input_dropout"):
        build_model("mlp", MNIST, 10, {"hiden": [5]}, where="student.model")


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"model.hidden: must be a non-empty list of integers in \[1, 2147483647\]"):
        build_model("mlp", MNIST, 10, {"hidden": 20})
    with pytest.raises(ConfigError, match=r"model.dropout: must be a number in \[0, 1\), got 1.5"):
        build_model("mlp", MNIST, 10, {"dropout": 1.5})
    # NaN passes torch's own `p < 0 or p > 1` check and would silently turn every activation into NaN
    with pytest.raises(ConfigError, match=r"teacher.model.dropout: must be a number in \[0, 1\), got nan"):
        build_model("cnn", MNIST, 10, {"dropout": float("nan")}, where="teacher.model")
    with pytest.raises(ConfigError, match=r"model.channels: must be a non-empty list of integers"):
        build_model("cnn", MNIST, 10, {"channels": [8, True]})
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build_model("resnet", MNIST, 10)


def test_model_params_lists_defaults():
    assert model_params("mlp") == {"hidden": (1200, 1200), "dropout": 0.0, "input_dropout": 0.0}


def test_mlp_input_dropout_drops_pixels_in_training_only():
    from kdlab.models.chain import linear_chain

    model = build_model("mlp", MNIST, 10, {"hidden": [8], "input_dropout": 0.2})
    first = model.net[0]
    assert isinstance(first, FastDropout) and first.p == 0.2
    torch.manual_seed(0)
    assert first(torch.ones(100, 784)).eq(0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    x = torch.randn(2, *MNIST)
    model.eval()
    assert torch.equal(model(x), model.net[1:](x.flatten(1)))  # eval: the pixels pass unchanged
    assert linear_chain(model) is None  # not a plain Linear/ReLU chain any more
    assert isinstance(build_model("mlp", MNIST, 10, {"hidden": [8]}).net[0], torch.nn.Linear)  # 0: no module at all
    with pytest.raises(ConfigError, match=r"model.input_dropout: must be a number in \[0, 1\), got 1.0"):
        build_model("mlp", MNIST, 10, {"input_dropout": 1.0})


def test_fast_dropout_statistics_and_gradient():
    torch.manual_seed(0)
    drop = FastDropout(0.5)
    x = torch.ones(400, 1000, requires_grad=True)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.5, abs=0.005)
    assert set(torch.unique(y.detach()).tolist()) == {0.0, 2.0}  # inverted scaling 1/(1-p)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient is the same mask
    assert FastDropout(0.2)(torch.ones(500, 1000)).ne(0).float().mean().item() == pytest.approx(0.8, abs=0.005)


def test_fast_dropout_is_identity_in_eval_and_reproducible():
    drop = FastDropout(0.5).eval()
    x = torch.randn(10, 10)
    assert drop(x) is x
    drop.train()
    torch.manual_seed(7)
    a = drop(torch.ones(50, 50))
    torch.manual_seed(7)
    assert torch.equal(a, drop(torch.ones(50, 50)))
