"""Which parameter is which: names, printed guesses, --student-arg/--teacher-arg, classes and --init."""

import inspect

import pytest

from kdlab import ConfigError
from kdlab.doctor import adapt, diagnose, parse_values
from kdlab.doctor.calling import _word_role

from . import buggy_losses as B


@pytest.mark.parametrize(
    "fn, roles, guessed",
    [
        (B.named_logits, {"student": "logits_student", "teacher": "logits_teacher", "T": "temperature"}, []),
        (B.closure_temperature, {"student": "y_s", "teacher": "y_t"}, []),
        (B.named_soft, {"student": "soft_predictions", "teacher": "soft_labels", "T": "T"}, ["student", "teacher"]),
        (B.named_outputs, {"student": "outputs", "teacher": "teacher_outputs", "T": "T"}, ["student"]),
        (B.named_targets, {"student": "outputs", "teacher": "targets", "T": "T"}, ["student", "teacher"]),
        (B.targets_are_labels, {"student": "outputs", "teacher": "teacher_outputs", "labels": "targets", "T": "T"}, ["student"]),
        (B.correct_with_labels, {"student": "outputs", "teacher": "teacher_outputs", "labels": "labels", "T": "T"}, ["student"]),
    ],
)
def test_roles_from_names(fn, roles, guessed):
    a = adapt(fn)
    assert a.roles == roles and a.guessed == guessed
    lines = a.guess_lines()
    if guessed:
        used = ", ".join(f"{r}={roles[r]}" for r in ("student", "teacher", "labels") if r in roles)
        assert lines == [f"doctor: using {used} (guessed from the names; override with --student-arg/--teacher-arg)"]
    else:
        assert lines == []


@pytest.mark.parametrize(
    "fn, roles, line",
    [
        (B.keras_style, {"student": "y_pred_student", "teacher": "y_pred_teacher", "T": "temperature"},
         "student=y_pred_student, teacher=y_pred_teacher"),
        (B.camel_case, {"student": "studentLogits", "teacher": "teacherLogits", "T": "kdTemp"},
         "student=studentLogits, teacher=teacherLogits, T=kdTemp"),
        (B.distill_with_labels, {"student": "stu_out", "teacher": "tea_out", "labels": "gt_label", "T": "kd_temp"},
         "student=stu_out, teacher=tea_out, labels=gt_label, T=kd_temp"),
        (B.reversed_roles, {"student": "student_view", "teacher": "teacher_view", "T": "T"},
         "student=student_view, teacher=teacher_view"),
    ],
)
def test_roles_from_words_inside_the_names(fn, roles, line):
    """y_pred_student, stu_out, studentLogits, kd_temp: placed from a word in the name, and the guess is printed."""
    a = adapt(fn)
    assert a.roles == roles
    assert a.guess_lines() == [f"doctor: using {line} (guessed from the names; override with --student-arg/--teacher-arg)"]
    d = diagnose(fn)
    assert d.correct and d.matches == "hinton", d.lines()
    assert d.lines()[0] == a.guess_lines()[0]


def test_words_in_names_leave_settings_alone():
    """kd_alpha=0.9 is a setting (a number default), kd_temp the temperature, --arg kd_temp=3 the probe T."""
    a = adapt(B.distill_with_labels, extra={"kd_temp": 3.0})
    assert "kd_alpha" not in a.roles.values() and a.default_T == 3.0 and a.extra == {}
    assert diagnose(B.distill_with_labels).soft_weight == pytest.approx(0.9, rel=1e-6)


@pytest.mark.parametrize(
    "name, default, role",
    [
        ("y_pred_student", None, "student"), ("sLogits", None, "student"), ("pred_s", None, "student"),
        ("tea_out", None, "teacher"), ("teacher_targets", None, "teacher"), ("y_pred_t", None, "teacher"),
        ("target_labels", None, "labels"), ("gt_label", None, "labels"),
        ("kdTemp", 4.0, "T"), ("T_kd", 4.0, "T"), ("distill_tau", 2.0, "T"),
        ("teacher_weight", 0.5, None), ("student_mask", None, None), ("logits_T", None, None),
        ("student_teacher_ratio", None, None), ("kd_t", 4.0, None),
    ],
)
def test_role_words(name, default, role):
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    param = inspect.Parameter(name, kind, default=inspect.Parameter.empty if default is None else default)
    assert _word_role(param) == role


def test_listed_role_names_are_placed_without_a_guess_line():
    """student_out/teacher_out and s_logits/t_logits are listed names: sure, so no guess line."""
    def a(student_out, teacher_out, T):
        return B.named_logits(student_out, teacher_out, T)

    def b(s_logits, t_logits, temperature):
        return B.named_logits(s_logits, t_logits, temperature)

    assert adapt(a).roles == {"student": "student_out", "teacher": "teacher_out", "T": "T"} and adapt(a).guess_lines() == []
    assert adapt(b).roles == {"student": "s_logits", "teacher": "t_logits", "T": "temperature"} and adapt(b).guess_lines() == []


def test_user_says_which_argument_is_which():
    a = adapt(B.reversed_roles, student_arg="student_view", teacher_arg="teacher_view")
    assert a.roles == {"student": "student_view", "teacher": "teacher_view", "T": "T"} and a.guess_lines() == []
    a = adapt(B.named_targets, teacher_arg="targets")  # the teacher given, the student still guessed: said so
    assert a.guessed == ["student"] and "student=outputs" in a.guess_lines()[0]


@pytest.mark.parametrize(
    "call, needles",
    [
        (lambda: adapt(B.unknown_names), ["parameters: a, b, T", "--student-arg NAME --teacher-arg NAME"]),
        (lambda: adapt(B.two_student_views), ["student_view and student_view_aug could both be the student", "--student-arg"]),
        (lambda: adapt(B.two_students), ["outputs and logits could both be the student", "--student-arg"]),
        (lambda: adapt(B.named_soft, student_arg="preds"), ["--student-arg preds", "parameters: soft_predictions, soft_labels, T"]),
        (lambda: adapt(B.reversed_roles, student_arg="T", teacher_arg="T"), ["both name T"]),
        (lambda: adapt(B.MeanKD, init={"T": 2.0}), ["needs constructor argument(s) weight", "--init weight=VALUE"]),
        (lambda: adapt(B.MeanKD, init={"T": 2.0, "weight": 1, "bogus": 1}), ["no constructor argument 'bogus'", "T, weight"]),
        (lambda: adapt(B.named_soft, init={"T": 2.0}), ["--init applies to a loss class"]),
        (lambda: parse_values(["weight=nan"], "--init"), ["--init weight=nan", "finite"]),
        (lambda: parse_values(["weight=.inf"], "--init"), ["finite"]),
        (lambda: parse_values(["alpha=[1, -.inf]"], "--arg"), ["finite"]),
        (lambda: parse_values(["novalue"], "--init"), ["expected NAME=VALUE"]),
        (lambda: parse_values(["a=1", "a=2"], "--arg"), ["given twice"]),
    ],
)
def test_one_line_errors(call, needles):
    with pytest.raises(ConfigError) as exc:
        call()
    assert "\n" not in str(exc.value)
    for needle in needles:
        assert needle in str(exc.value)


def test_temperature_given_with_arg_is_the_probe_temperature():
    a = adapt(B.reversed_kl, extra={"temperature": 3.0})
    assert a.roles["T"] == "temperature" and a.default_T == 3.0 and a.extra == {}
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        adapt(B.reversed_kl, extra={"temperature": -1})


def test_values_parse_as_literals_then_yaml():
    assert parse_values(["a=1e-3", "b=mean", "c=[1, 2]", "d=true", "e=None", "f=0.9"]) == {
        "a": 1e-3, "b": "mean", "c": [1, 2], "d": True, "e": None, "f": 0.9}


def test_classes_and_instances():
    a = adapt(B.DistillKL, init={"T": 3.0})
    assert a.init_T == "T" and a.default_T == 3.0 and a.takes_T
    assert a.roles == {"student": "y_s", "teacher": "y_t"}
    assert a._callable(2.0).T == 2.0 and a._callable(5.0).T == 5.0  # T varies by re-instantiating
    a = adapt(B.KDLoss)
    assert a.init_T == "temperature" and a.default_T == 4.0 and a.takes_labels
    a = adapt(B.criterion)  # module-level instance: forward's signature, T read from .T and said so
    assert a.roles == {"student": "y_s", "teacher": "y_t"} and not a.takes_T and a.default_T == 4.0
    assert a.guess_lines() == ["doctor: using T=4 read from the instance attribute .T (override with -T)"]
