from pathlib import Path

import pytest

from kdlab import ConfigError
from kdlab.cli import main
from kdlab.doctor import diagnose, load_function
from kdlab.losses import SOFT_LOSSES

from . import buggy_losses as B

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", SOFT_LOSSES.names())
def test_every_registered_coding_is_recognised(name):
    d = diagnose(SOFT_LOSSES.get(name))
    assert d.matches == name
    assert d.correct == (name == "hinton")
    assert not d.teacher_grad


@pytest.mark.parametrize(
    "fn, kwargs, expect",
    [
        (B.correct_with_labels, {}, None),
        (B.reversed_kl, {}, "reversed KL"),
        (B.closure_temperature, {"temperature": 5.0}, None),
        (B.closure_temperature, {"temperature": 2.0}, "is -T the value it uses"),  # told the wrong T
        (B.summed, {}, "sums over the batch"),
        (B.only_teacher_softened, {}, "not divided by T"),
        (B.mse_logits, {}, "not proportional"),
        (B.returns_dict, {}, "missing T²"),
        (B.needs_weight, {"extra": {"beta": 0.5}}, None),
    ],
)
def test_hand_written_losses(fn, kwargs, expect):
    d = diagnose(fn, **kwargs)
    if expect is None:
        assert d.correct, d.lines()
    else:
        assert not d.correct and any(expect in f for f in d.findings), d.lines()


def test_teacher_gradient_is_a_note_not_a_warning():
    """Not detaching is only a fault when the caller's teacher logits carry grad; kdlab's never do."""
    d = diagnose(B.teacher_not_detached)
    assert d.teacher_grad and d.correct and d.warnings == []
    text = "\n".join(d.lines())
    assert "WARNING" not in text
    note = [n for n in d.notes if n.startswith("teacher logits not detached")]
    assert len(note) == 1 and "torch.no_grad()" in note[0] and ".detach()" in note[0] and "trained" in note[0]
    assert not diagnose(B.closure_temperature, temperature=5.0).teacher_grad


def test_cli_prints_no_teacher_warning_for_a_correct_loss(capsys):
    assert main(["doctor", f"{HERE / 'buggy_losses.py'}:teacher_not_detached"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" not in out and "NOTE: teacher logits not detached: fine when the teacher runs under torch.no_grad()" in out


def test_effective_weights_are_reported():
    d = diagnose(B.correct_with_labels)
    assert d.hard_weight == pytest.approx(0.1) and d.soft_weight == pytest.approx(0.9)
    assert d.exponents == {"T": 2, "K": 0, "B": 0}
    d = diagnose(B.returns_dict)
    assert d.hard_weight == pytest.approx(0.3) and d.matches == "no-T2"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: diagnose(B.closure_temperature), "pass the T it uses with -T"),
        (lambda: diagnose(B.needs_weight), "--arg beta=VALUE"),
        (lambda: diagnose(B.returns_float), "not a scalar tensor"),
        (lambda: diagnose(B.one_argument), "student and teacher logits"),
        (lambda: load_function("kdlab.nope:fn"), "cannot import kdlab.nope"),
        (lambda: load_function("kdlab.losses:nope"), "has no function 'nope'"),
        (lambda: load_function("no_colon"), "MODULE:FUNCTION"),
        (lambda: diagnose(SOFT_LOSSES.get("hinton"), temperature=-1), "-T must be > 0"),
    ],
)
def test_unusable_functions_get_one_line_errors(call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")) as exc:
        call()
    assert "\n" not in str(exc.value)


def test_cli_exit_codes(capsys):
    path = HERE / "buggy_losses.py"
    assert main(["doctor", "kdlab.losses.kd:kd_loss"]) == 0
    assert "CORRECT" in capsys.readouterr().out
    assert main(["doctor", f"{path}:reversed_kl"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM: reversed KL" in out and "evidence:" in out
    assert main(["doctor", f"{path}:needs_weight", "--arg", "beta=0.5"]) == 0
    capsys.readouterr()
    assert main(["doctor", f"{path}:closure_temperature"]) == 2
    assert "-T" in capsys.readouterr().err
