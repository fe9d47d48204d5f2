"""The generated reference pages (docs/hooks.py) cover what the code accepts."""

from __future__ import annotations

import sys
from pathlib import Path

from kdlab.cli import build_parser
from kdlab.config import FRACTION, POSITIVE
from kdlab.recipes import load_recipe
from kdlab.utils import flatten_settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
import hooks  # noqa: E402


def test_recipe_keys_page_lists_every_key_of_a_resolved_recipe_with_its_default():
    keys = {k: (t, d, r) for k, t, d, r in hooks.recipe_keys()}
    recipe = load_recipe("digits-mlp").to_dict()
    for key in flatten_settings(recipe):
        if key.startswith(("teacher.model.", "student.model.")) and not key.endswith(".name"):
            continue  # a model's own parameters: kdlab recipes and kdlab layers show them
        assert key in keys, key
    assert keys["distill.temperature"][2] == POSITIVE.text
    assert keys["dataset.val_fraction"][1:] == ("0.0", FRACTION.text)


def test_cli_page_has_every_command():
    text = hooks.cli_help()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"### kdlab {name}\n" in text and f"usage: kdlab {name}" in text
