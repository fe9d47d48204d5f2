"""The one rule by which kdlab reads logits from a model's output (kdlab.logits.logits_of), and the
places that use it beyond training steps: evaluation and the teacher's (cached) logits."""

import pytest
import torch
from torch import nn

from kdlab.data import TensorData
from kdlab.errors import ConfigError
from kdlab.logits import logits_of
from kdlab.teacher import FrozenTeacher, TeacherEnsemble
from kdlab.train.records import evaluate
from tests.catalogue.test_api import HFOutput, Wrapped
from tests.user_models import TinyCNN

Z = torch.randn(4, 3)


@pytest.mark.parametrize("output", [Z, HFOutput(logits=Z, hidden=Z + 1), {"features": Z + 1, "logits": Z}, (Z, Z + 1), [Z]],
                         ids=["tensor", "model-output", "dict", "tuple", "list"])
def test_the_rule_reads_the_logits_tensor_itself(output):
    assert logits_of(output) is Z


class Attr:
    def __init__(self):
        self.logits = Z


@pytest.mark.parametrize("output,words", [
    ({"out": Z}, ["dict without a 'logits' tensor", "'out'"]),
    ({"logits": "z"}, ["without a 'logits' tensor"]),
    ("abc", ["returned a str"]), (None, ["returned None"]), ((), ["tuple whose first element is nothing"]),
    (("a", Z), ["tuple whose first element is a str"]), (3, ["returned an int"]),
])
def test_anything_else_is_one_line_naming_the_type_and_the_rule(output, words):
    with pytest.raises(ConfigError) as caught:
        logits_of(output, "teacher")
    message = str(caught.value)
    assert "\n" not in message and "the teacher's forward" in message and "'logits'" in message and "first element" in message
    assert all(w in message for w in words), message


def test_an_object_with_a_logits_attribute():
    assert logits_of(Attr()) is Z


@pytest.mark.parametrize("kind", ["object", "dict", "tuple"])
def test_teacher_logits_cache_ensemble_and_evaluation_use_the_rule(kind):
    torch.manual_seed(0)
    bare = TinyCNN(4)
    wrapped = Wrapped(4, kind)
    wrapped.net.load_state_dict(bare.state_dict())
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 3
    want = bare.eval()(x).detach()
    torch.testing.assert_close(FrozenTeacher(wrapped).logits_for(x, batch_size=4), want)  # the cached logits
    torch.testing.assert_close(FrozenTeacher(TeacherEnsemble([wrapped, bare])).member_logits(x)[:, 0], want)
    torch.testing.assert_close(FrozenTeacher(TeacherEnsemble([wrapped, wrapped])).forward(x), want)
    assert evaluate(wrapped, TensorData(x, y), batch_size=4) == evaluate(bare, TensorData(x, y), batch_size=4)
