"""Waiting on child processes in tests: generous limits, and the child's output when one is hit.

A busy machine (another job on a 2-core host) makes a child 5-10x slower than on a quiet one, so a
limit only guards against a hang; when it is reached the test fails with everything the child
printed, not with a bare ``TimeoutExpired``.
"""

from __future__ import annotations

import subprocess
from typing import Any, Sequence, Tuple

import pytest

#: Seconds a child may take before a test calls it hung (a hang, not slowness, is what it catches).
LIMIT = 900.0


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def communicate(proc: subprocess.Popen, timeout: float = LIMIT, stdin: Any = None) -> Tuple[str, str]:
    """``proc.communicate`` that kills a hung child and fails the test with its output."""
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} still ran after {timeout:.0f} s; it printed:\n{_text(out)[-3000:]}\n--- stderr:\n{_text(err)[-3000:]}")
    return out, err


def run(cmd: Sequence[str], timeout: float = LIMIT, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` with :data:`LIMIT`; a hung child fails the test with what it printed."""
    try:
        return subprocess.run(cmd, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{list(cmd)!r} still ran after {timeout:.0f} s; it printed:\n{_text(exc.output)[-3000:]}\n"
                    f"--- stderr:\n{_text(exc.stderr)[-3000:]}")
