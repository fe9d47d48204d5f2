"""Bad-input catalogue for `kdlab explain` and `kdlab doctor` (issue 9, parts 8, 9, 11)."""

from pathlib import Path

import pytest

from .harness import check_bad_input, run_cli

LOSSES = str(Path(__file__).resolve().parents[1] / "doctor" / "buggy_losses.py")

CASES = [
    (["explain", "--teacher", "nan,1,2"], ["teacher logits must be finite", "position 0"]),
    (["explain", "--teacher=-inf,0,1", "-T", "inf"], ["teacher logits must be finite"]),
    (["doctor", f"{LOSSES}:raises"], ["raises(", "RuntimeError: shapes do not match the config"]),
    (["doctor", f"{LOSSES}:unknown_names"], ["parameters: a, b, T", "--student-arg NAME --teacher-arg NAME"]),
    (["doctor", f"{LOSSES}:MeanKD", "--init", "T=2", "--init", "weight=.inf"], ["--init weight=inf", "finite"]),
    (["doctor", f"{LOSSES}:sequence_kd", "--shape", "B,K"], ["sequence_kd(", "ValueError: not enough values to unpack"]),
]


@pytest.mark.parametrize("args, needles", CASES, ids=[" ".join(a[:1] + [Path(x).name for x in a[1:2]] + a[2:]) for a, _ in CASES])
def test_bad_input(args, needles, tmp_path):
    check_bad_input(args, tmp_path, needles)


def test_extreme_logits_and_nan_results_are_answers_not_errors(tmp_path):
    r = run_cli(["explain", "--teacher", "1000,0,-1000", "--student=-1e4,0,1e4", "-T", "1"], tmp_path)
    assert r.code == 0 and r.err == "" and "nan" not in r.out.lower() and "inf" not in r.out.lower()
    r = run_cli(["doctor", f"{LOSSES}:returns_inf"], tmp_path)
    assert r.code == 1 and "Traceback" not in r.err and "PROBLEM: returns -inf for student logits [" in r.out
    r = run_cli(["doctor", f"{LOSSES}:sequence_kd"], tmp_path)  # runs only on (B, L, K): diagnosed there, not refused
    assert r.code == 0 and r.err == "" and "diagnosed as sequence logits" in r.out
