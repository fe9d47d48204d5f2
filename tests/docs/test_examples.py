"""Every example in the README and the getting-started page runs as written, in a fresh folder.

Fenced ```bash and ```python blocks run in document order in one temporary folder (later blocks use
the runs earlier ones made). A block preceded by ``<!-- docs-test: skip (reason) -->`` is shown, not
run (installs, multi-process launches). ``text`` blocks are output, never run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kdlab

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/getting-started.md"]
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>bash|python)\n(?P<body>.*?)\n```", re.S)
SKIP = "<!-- docs-test: skip"


def blocks(path: Path) -> list:
    """(language, code) of each block that runs, in order; a skipped block must say why."""
    out = []
    for m in FENCE.finditer(path.read_text(encoding="utf-8")):
        if m["before"].startswith(SKIP):
            assert "(" in m["before"], f"{path}: a skipped block must give its reason: {m['before']}"
            continue
        out.append((m["lang"], m["body"]))
    return out


def test_skipped_blocks_are_few_and_explained():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(SKIP) <= 1  # only the install commands
    assert "python -m pytest -q" in text  # CI runs the README's test command


@pytest.mark.parametrize("doc", DOCS)
def test_every_example_runs(doc, tmp_path):
    if doc == "README.md" and importlib.util.find_spec("onnxruntime") is None and not os.environ.get("CI"):
        pytest.skip("the README's export example needs the onnx extra: pip install 'kdlab[onnx]'")
    todo = blocks(ROOT / doc)
    if not todo:
        return
    src = Path(kdlab.__file__).resolve().parents[1]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kdlab").write_text(f"#!/bin/sh\nexec {sys.executable} -m kdlab \"$@\"\n")
    (bindir / "kdlab").chmod(0o755)
    (bindir / "python").symlink_to(sys.executable)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(src),
           "KDLAB_TEACHER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for i, (lang, code) in enumerate(todo):
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{doc} block {i + 1} ({lang}) failed:\n{code}\n--- stderr:\n{proc.stderr[-3000:]}"


def test_recipes_table_matches_the_bundled_recipes():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_recipes_table
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gen_recipes_table.rewrite(text) == text, "README's recipes table is stale: run python docs/gen_recipes_table.py"
