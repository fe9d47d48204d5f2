"""MkDocs hook: reference tables generated from the code, so they cannot drift from it.

``<!-- generated: recipe-keys -->`` becomes every recipe key with its type, default and allowed
range, read from the settings dataclasses (:mod:`kdlab.config`); ``<!-- generated: cli -->``
becomes each command's ``--help``, from the argparse parsers (:func:`kdlab.cli.build_parser`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator, Tuple


def recipe_keys() -> Iterator[Tuple[str, str, str, str]]:
    from kdlab.config import Recipe

    def walk(cls: Any, obj: Any, prefix: str) -> Iterator[Tuple[str, str, str, str]]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("sections", "given"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(type(value), value, f"{prefix}{f.name}.")
                continue
            rule = f.metadata.get("rule")
            hint = hints[f.name]
            tp = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            yield f"{prefix}{f.name}", tp, repr(value), rule.text if rule is not None else ""

    yield from walk(Recipe, Recipe(), "")


def recipe_table() -> str:
    rows = ["| key | type | default | allowed |", "| --- | --- | --- | --- |"]
    rows += [f"| `{k}` | `{t}` | `{d}` | {r} |" for k, t, d, r in recipe_keys()]
    return "\n".join(rows)


def cli_help() -> str:
    import os

    from kdlab.cli import build_parser

    os.environ.setdefault("COLUMNS", "100")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    parts = ["```text\n" + parser.format_help() + "```"]
    for name, p in sub.choices.items():
        parts.append(f"### kdlab {name}\n\n```text\n{p.format_help()}```")
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- generated: recipe-keys -->" in markdown:
        markdown = markdown.replace("<!-- generated: recipe-keys -->", recipe_table())
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_help())
    return markdown
