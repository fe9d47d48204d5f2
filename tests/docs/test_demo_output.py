"""The demo output the README and the getting-started page show is what ``kdlab demo`` prints.

One full demo (digits, 20 seeds, the recipe's epochs) runs; each line shown must be a printed line
in the same order with the same words and counts, and every accuracy within the tolerance the
README states (float rounding differs between CPUs and torch builds).
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from kdlab.cli import main

from . import markdown
from .markdown import ROOT

TOLERANCE = 0.5  # points of accuracy; the README says so
NUMBER = re.compile(r"[+−-]?\d[\d,]*(?:\.\d+)?")
WINS = re.compile(r"ahead on (\d+)/")


def shape(line: str) -> str:
    return NUMBER.sub("#", line)


def numbers(line: str) -> list:
    return [m.group() for m in NUMBER.finditer(line)]


def value(token: str) -> float:
    return float(token.replace("−", "-").replace(",", ""))


def matches(shown: str, printed: str) -> bool:
    """Same words; decimals within TOLERANCE; counts equal except the win count (within 2 seeds)."""
    if shape(shown) != shape(printed):
        return False
    wins = WINS.search(shown)
    wins_at = len(numbers(shown[:wins.start(1)])) if wins else None
    for i, (a, b) in enumerate(zip(numbers(shown), numbers(printed))):
        limit = TOLERANCE if "." in a else 2 if i == wins_at else 0
        if abs(value(a) - value(b)) > limit:
            return False
    return True


def unmatched(shown: list, printed: list) -> list:
    """Shown lines not found, in order, among the printed ones."""
    missing, at = [], 0
    for line in shown:
        hit = next((i for i in range(at, len(printed)) if matches(line, printed[i])), None)
        if hit is None:
            missing.append(line)
        else:
            at = hit + 1
    return missing


def readme_demo_lines() -> list:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## What the demo prints", 1)[1]
    block = next(b for b in markdown.blocks(ROOT / "README.md") if b.lang == "text" and "| model | parameters |" in b.body)
    assert block.body.splitlines()[0] in section  # the block of that section
    return [line for line in block.body.splitlines() if line.strip()]


def getting_started_demo_lines() -> list:
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("| ")][:5]
    m = re.search(r"distilled − scratch \(paired by seed\): \*\*(.+?)\*\*; distilled ahead on\s+(\d+/\d+) seeds", text)
    assert m, "getting-started.md no longer shows the demo's paired difference"
    return table + [f"distilled − scratch (paired by seed): {m[1]}; distilled ahead on {m[2]} seeds"]


def test_matching_rule():
    printed = ["| teacher | 1,531,210 | 97.78 | 1 (seed 0) |", "",
               "distilled − scratch (paired by seed): +1.38 points, 95% CI [+1.02, +1.73]; distilled ahead on 19/20 seeds"]
    assert unmatched(["| teacher | 1,531,210 | 98.06 | 1 (seed 0) |",
                      "distilled − scratch (paired by seed): +1.54 points, 95% CI [+1.26, +1.83]; distilled ahead on 20/20 seeds"],
                     printed) == []
    assert unmatched(["| teacher | 1,531,210 | 98.36 | 1 (seed 0) |"], printed)          # 0.58 points off
    assert unmatched(["| teacher | 1,531,211 | 97.78 | 1 (seed 0) |"], printed)          # a count differs
    assert unmatched(["| teacher | 1,531,210 | 97.78 | 2 (seed 0) |"], printed)
    assert unmatched(["distilled − scratch (paired by seed): +1.38 points, 95% CI [+1.02, +1.73]; distilled ahead on 16/20 seeds"],
                     printed)
    assert unmatched(["| student | 1,531,210 | 97.78 | 1 (seed 0) |"], printed)          # words differ
    assert unmatched([printed[2], printed[0]], printed)                                    # order differs


@pytest.fixture(scope="module")
def demo_printed(tmp_path_factory) -> list:
    """One full ``kdlab demo`` with a teacher cache of its own, its stdout lines."""
    tmp = tmp_path_factory.mktemp("demo")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        mp.setenv("KDLAB_TEACHER_CACHE", str(tmp / "cache"))
        code = main(["demo", "--out", str(tmp / "demo"), "--no-progress"])
    assert code == 0
    return out.getvalue().splitlines()


@pytest.mark.parametrize("lines", [readme_demo_lines, getting_started_demo_lines], ids=["README.md", "getting-started.md"])
def test_shown_demo_output_is_what_the_demo_prints(lines, demo_printed):
    shown = lines()
    assert len(shown) >= 6 and any(line.startswith("| student, distilled") for line in shown)
    missing = unmatched(shown, demo_printed)
    assert not missing, ("these lines are not printed by `kdlab demo` (within "
                         f"{TOLERANCE} points):\n" + "\n".join(missing) + "\n--- printed:\n" + "\n".join(demo_printed))


def test_readme_states_the_tolerance():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"within {TOLERANCE} points" in text
