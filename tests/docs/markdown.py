"""The code blocks of the README and the docs pages, and how the docs test runs each of them.

Every fenced block is one of:

* ``bash``: run, one command at a time, in-process (``kdlab.cli.main``); the supported lines are
  ``kdlab ...`` (with ``&&``, ``|| echo ...`` and ``# comments``) and ``cat > FILE <<'TAG'`` heredocs;
* ``python``: run with ``exec`` in the page's folder;
* ``yaml``: a complete recipe, saved under the name its ``<!-- save-as: FILE -->`` marker gives, and
  run by a later ``bash`` block of the same page;
* ``text``: output, never run.

A block preceded by ``<!-- not-run: reason -->`` is shown, not run (installs, torchrun); one preceded
by ``<!-- validate-only: reason -->`` (GPU or multi-hour runs) has each ``kdlab`` command parsed and
its recipe validated, nothing trained; ``<!-- save-as: FILE -->`` writes a ``python`` or ``yaml`` block to FILE instead
of running it. Training commands run small: :data:`SMALL` is appended to them, then the flags of a
``<!-- run-with: FLAGS -->`` marker before the block (for a block that needs more epochs).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
RUN = ("bash", "python", "yaml")
OUTPUT = ("text",)

# The rewrite rule: every training command trains each model one epoch (the last --set wins over
# --epochs / --teacher-epochs), and a search runs two trials.
SMALL_EPOCHS = ["--set", "teacher.train.epochs=1", "--set", "student.train.epochs=1"]
SMALL = {
    "train-teacher": SMALL_EPOCHS,
    "train-student": SMALL_EPOCHS,
    "distill": SMALL_EPOCHS,
    "demo": SMALL_EPOCHS,
    "compare": SMALL_EPOCHS,
    "tune": SMALL_EPOCHS + ["--trials", "2"],
    "reproduce": SMALL_EPOCHS,
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|validate-only|save-as|run-with):\s*(?P<value>.*?)\s*-->\s*$")
STRAY_COMMAND = re.compile(r"^ {4,}(kdlab|python|pip|torchrun) ")


@dataclass(frozen=True)
class Block:
    doc: str       # path relative to the repository
    line: int      # 1-based line of the opening fence
    lang: str
    body: str
    marker: Optional[Tuple[str, str]]  # (kind, value): not-run/validate-only reason, save-as file, run-with flags

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def pages() -> List[Path]:
    """The README and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> List[Block]:
    """Every fenced block of ``path`` in order, with the marker on the line before it (if any)."""
    doc = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    out: List[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["info"].strip()
        body: List[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise AssertionError(f"{doc}:{i + 1}: the code block is never closed")
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mk = MARKER.match(lines[k]) if k >= 0 else None
        out.append(Block(doc, i + 1, lang, "\n".join(body) + "\n", (mk["kind"], mk["value"]) if mk else None))
        i = j + 1
    return out


def stray_commands(path: Path) -> List[str]:
    """Commands shown as indented code outside a fence: the docs test could not see them."""
    found, inside = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif not inside and STRAY_COMMAND.match(line):
            found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return found


def problems(block: Block) -> List[str]:
    """Why ``block`` is neither run nor marked, or is marked wrongly (empty when it is fine)."""
    kind = block.marker[0] if block.marker else None
    if kind in ("not-run", "validate-only") and not block.marker[1]:
        return [f"{block.where}: `{kind}:` needs a reason"]
    if kind == "not-run":
        return []
    if kind == "validate-only" and block.lang != "bash":
        return [f"{block.where}: validate-only is for bash blocks"]
    if block.lang not in RUN + OUTPUT:
        return [f"{block.where}: a ```{block.lang or '(no language)'} block is neither run nor output; label it "
                f"bash, python or yaml (run) or text (output), or put <!-- not-run: reason --> before it"]
    if kind == "run-with" and block.lang != "bash":
        return [f"{block.where}: run-with is for bash blocks"]
    if kind == "save-as" and block.lang not in ("python", "yaml"):
        return [f"{block.where}: save-as is for python and yaml blocks"]
    if block.lang == "yaml" and kind != "save-as":
        return [f"{block.where}: a yaml recipe needs <!-- save-as: NAME.yaml --> and a later bash block running it"]
    return []


@dataclass(frozen=True)
class Command:
    argv: List[str]
    may_fail: bool = False          # followed by `|| echo ...`: exit 0 or 1 (a problem found), never 2
    heredoc: Optional[Tuple[str, str]] = None  # (file, text) for `cat > FILE <<'TAG'`


HEREDOC = re.compile(r"^cat > (?P<file>\S+) <<-?'?(?P<tag>\w+)'?$")


def commands(block: Block) -> List[Command]:
    """The commands of a bash block, in the subset the docs test runs in-process."""
    lines = block.body.splitlines()
    out: List[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        m = HEREDOC.match(line)
        if m:
            end = lines.index(m["tag"], i)
            out.append(Command(["cat"], heredoc=(m["file"], "\n".join(lines[i:end]) + "\n")))
            i = end + 1
            continue
        words = shlex.split(line, comments=True)
        if not words:
            continue
        may_fail = "||" in words
        if may_fail:
            fallback = words[words.index("||") + 1:]
            assert fallback[:1] == ["echo"], f"{block.where}: only `|| echo ...` may follow a command: {line}"
            words = words[:words.index("||")]
        while words:
            part = words[:words.index("&&")] if "&&" in words else words
            words = words[len(part) + 1:]
            assert part[:1] == ["kdlab"], (f"{block.where}: the docs test runs kdlab commands and `cat > FILE <<'EOF'` in bash "
                                            f"blocks; mark the block <!-- not-run: reason --> to show `{line}`")
            out.append(Command(part[1:], may_fail=may_fail and not words))
    return out


# The role whose settings a training command's flags (--epochs, --lr, --batch-size) set.
ROLES = {"train-teacher": "teacher", "train-student": "student", "distill": "student"}


def validate(argv: List[str]) -> None:
    """Parse ``argv`` with kdlab's own parser and validate the recipe it names, training nothing.

    Raises SystemExit (a flag argparse refuses) or KDLabError (a bad recipe value)."""
    from kdlab.cli import build_parser
    from kdlab.cli_recipe import recipe_from_args
    from kdlab.errors import KDLabError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise KDLabError(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in SMALL and args.command != "reproduce":
        default = "digits-mlp" if args.command == "demo" and not getattr(args, "dataset", None) else "mnist-mlp"
        recipe_from_args(args, ROLES.get(args.command), default)


def small(argv: List[str], block: Optional[Block] = None) -> List[str]:
    """``argv`` as the docs test runs it: :data:`SMALL` appended to a training command, then the
    flags of the block's ``<!-- run-with: FLAGS -->`` (a block that needs more than one epoch)."""
    if not argv or argv[0] not in SMALL:
        return argv
    extra = shlex.split(block.marker[1]) if block is not None and block.marker and block.marker[0] == "run-with" else []
    return [*argv, *SMALL[argv[0]], *extra]
