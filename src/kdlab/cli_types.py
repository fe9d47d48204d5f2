"""Argument types for the command line: numbers that must be finite and in range, lists of floats.

Python's ``float()`` accepts ``nan`` and ``inf``, and argparse's ``int`` accepts any size; these
types refuse both with the one-line error argparse prints.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

def float_list(text: str) -> list:
    try:
        return [float(x) for x in text.replace("[", "").replace("]", "").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


MAX_SEEDS = 10_000
MAX_TRIALS = 2**31 - 1


def finite_float(text: str) -> float:
    """``type=float`` without the 'nan'/'inf' that Python's float() accepts."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """``type=int`` restricted to [low, high], with the range in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text}")
        return value

    return parse


def percent(text: str) -> float:
    """An accuracy as a fraction in (0, 1] or a percentage in (1, 100]; returned as a fraction."""
    value = finite_float(text)
    fraction = value / 100 if value > 1 else value
    if not 0 < fraction <= 1:
        raise argparse.ArgumentTypeError(f"must be an accuracy in (0, 1] or a percentage in (1, 100], got {text!r}")
    return fraction
