"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, no broken link,
the Python API pages rendered from the docstrings. CI installs the ``docs`` extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.optional import require

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path):
    require("mkdocs")
    require("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8").count("distill") > 3
