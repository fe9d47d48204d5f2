"""The version is the one CHANGELOG.md's latest release names, in the package and its metadata."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import kdlab

ROOT = Path(__file__).resolve().parents[2]


def test_version_follows_the_changelog():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, re.M)
    assert "## [Unreleased]" in text and releases, "Keep a Changelog: an Unreleased section, then releases"
    if sys.version_info >= (3, 11):
        import tomllib

        meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert meta["version"] == releases[0][0]
        assert meta["classifiers"] and meta["license"] and meta["requires-python"]
    assert kdlab.__version__ == releases[0][0]
