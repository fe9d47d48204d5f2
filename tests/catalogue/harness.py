"""Shared harness for the bad-input catalogue (issue 9, part 11).

Every case runs the real CLI in a subprocess (so argparse, imports and exit codes are the user's),
in a scratch working directory, and checks the contract every kdlab command keeps on bad input:
exit code 2, exactly one line on stderr naming the problem, no traceback, and no file created,
changed or removed anywhere under the watched folders.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

from tests.subprocesses import LIMIT, run

SRC = str(Path(__file__).resolve().parents[2] / "src")


def snapshot(*roots: Path) -> Dict[str, str]:
    """Path -> sha256 of every file (and '<dir>' for every folder) under ``roots``."""
    out: Dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            if "__pycache__" in p.parts:
                continue
            key = str(p)
            if p.is_dir():
                out[key] = "<dir>"
            elif p.is_file():
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None, timeout: float = LIMIT,
            stdin: Optional[str] = None) -> CliResult:
    """``python -m kdlab ARGS`` in ``cwd`` with this checkout's sources first on the path."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = SRC + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    p = run([sys.executable, "-m", "kdlab", *args], cwd=cwd, env=full_env, capture_output=True, text=True,
            timeout=timeout, input=stdin)
    return CliResult(p.returncode, p.stdout, p.stderr)


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Exit 2, exactly one stderr line starting with ``kdlab``, containing every needle, no traceback."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2, f"exit {result.code}, stderr: {result.err!r}"
    assert "Traceback" not in result.err, result.err
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("kdlab"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def check_bad_input(args: Sequence[str], cwd: Path, needles: Iterable[str] = (), watch: Iterable[Path] = (),
                    env: Optional[Dict[str, str]] = None) -> CliResult:
    """Run a bad-input case and assert the whole contract; ``watch`` defaults to ``cwd``."""
    roots = [Path(cwd), *map(Path, watch)]
    before = snapshot(*roots)
    result = run_cli(args, cwd, env)
    assert_one_line_error(result, *needles)
    after = snapshot(*roots)
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"
    return result
