"""Write the README's table of bundled recipes from ``src/kdlab/recipes/*.yaml``.

Run ``python docs/gen_recipes_table.py`` after adding or changing a recipe; ``tests/docs`` fails
while the README's table differs from what this prints.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- recipes-table:", "<!-- /recipes-table -->"


def _model(spec) -> str:
    params = ", ".join(f"{k} {v}" for k, v in spec.params.items())
    return f"{spec.name} ({params})" if params else spec.name


def table() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from kdlab.recipes import bundled_recipes, load_recipe

    rows = ["| recipe | dataset | teacher | student | method |", "| --- | --- | --- | --- | --- |"]
    for name in bundled_recipes():
        r = load_recipe(name)
        teacher = " + ".join(_model(t.model) for t in r.teachers) if r.teachers else _model(r.teacher.model)
        rows.append(f"| `{name}` | {r.dataset.name} | {teacher} | {_model(r.student.model)} | {r.distill.method} |")
    return "\n".join(rows)


def rewrite(text: str) -> str:
    """``text`` with the lines between the table's markers replaced by the current table."""
    pattern = re.compile(rf"({re.escape(BEGIN)}[^\n]*\n).*?(\n{re.escape(END)})", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README}: no {BEGIN} ... {END} markers")
    return pattern.sub(lambda m: m.group(1) + table() + m.group(2), text)


if __name__ == "__main__":
    README.write_text(rewrite(README.read_text(encoding="utf-8")), encoding="utf-8")
