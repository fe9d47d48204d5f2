"""Every example of the README and the docs pages runs as written, in a fresh folder per page.

The blocks of a page run in order in one temporary folder (later blocks use the runs earlier ones
made), in this process: ``kdlab`` commands through :func:`kdlab.cli.main`, Python blocks with
``exec``. ``tests/docs/markdown.py`` says which blocks run and how; the visible rewrite rule is
:data:`markdown.SMALL` (one epoch per model, two trials per search). MNIST and Fashion-MNIST are
small generated files in the genuine IDX format (256 training, 64 test images), so the pages run
the same with or without the real data, and one teacher cache serves every page of the session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kdlab.cli import main

from kdlab.data.mnist_family import FASHION_MNIST, MNIST
from kdlab.errors import KDLabError
from tests.optional import require
from tests.test_recipes import tiny_idx
from . import markdown
from .markdown import ROOT

PAGES = markdown.pages()
RUNNABLE = [p for p in PAGES if any(b.lang in markdown.RUN and not (b.marker and b.marker[0] == "not-run")
                                    for b in markdown.blocks(p))]
# What a page's examples need beyond the core install (skipped outside CI, required in CI).
NEEDS = {"--onnx": "onnxruntime", "import torchvision": "torchvision", "kdlab tune": "optuna"}


@pytest.fixture(scope="session")
def docs_data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docs-data")


@pytest.fixture(scope="session")
def docs_teachers(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("docs-teachers")


@pytest.fixture
def docs_env(docs_data, docs_teachers, tmp_path, monkeypatch):
    """A fresh folder, the small data, the shared teacher cache; registries and imports undone after."""
    from kdlab.data.registry import DATASETS, SHAPES
    from kdlab.losses import SOFT_LOSSES
    from kdlab.methods import METHODS
    from kdlab.models import MODELS

    for reg in (DATASETS, SHAPES, SOFT_LOSSES, METHODS, MODELS):
        monkeypatch.setattr(reg, "_items", dict(reg._items))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for spec in (MNIST, FASHION_MNIST):  # the same files every time: one cached teacher per recipe
        tiny_idx(monkeypatch, docs_data, spec, n_train=256, n_test=64)
    monkeypatch.setenv("KDLAB_DATA_DIR", str(docs_data))
    monkeypatch.setenv("KDLAB_TEACHER_CACHE", str(docs_teachers))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    modules = set(sys.modules)
    yield work
    for name in set(sys.modules) - modules:  # the pages' own modules (my_losses, ...), imported from work
        if str(work) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]


def run_kdlab(argv, capsys) -> tuple:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exits (a renamed flag)
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_block_is_run_or_marked():
    """No block is skipped silently: each runs, is output (text), or says why it does not run."""
    found = []
    for page in PAGES:
        found += markdown.stray_commands(page)
        page_blocks = markdown.blocks(page)
        for i, block in enumerate(page_blocks):
            found += markdown.problems(block)
            if block.marker and block.marker[0] == "save-as":
                later = "".join(b.body for b in page_blocks[i + 1:] if b.lang == "bash")
                if block.marker[1] not in later and Path(block.marker[1]).stem not in later:  # a file, or a module
                    found.append(f"{block.where}: {block.marker[1]} is saved but no later bash block uses it")
    assert not found, "\n".join(found)


def test_the_markers_are_found():
    """The extractor sees the blocks it must: install lines are not-run, the recipes are saved."""
    readme = markdown.blocks(ROOT / "README.md")
    assert [b.marker[0] for b in readme if b.marker] == ["not-run"]
    assert "pip install" in next(b for b in readme if b.marker).body
    assert "python -m pytest -q" in (ROOT / "README.md").read_text(encoding="utf-8")  # CI runs the README's test command
    yaml = [b for p in PAGES for b in markdown.blocks(p) if b.lang == "yaml"]
    assert len(yaml) >= 5 and all(b.marker and b.marker[0] == "save-as" for b in yaml)


def test_bash_subset():
    block = markdown.Block("x.md", 1, "bash", "cat > a.yaml <<'YAML'\nbase: digits-mlp\nYAML\n"
                           "kdlab recipes a.yaml   # check it\nkdlab doctor f.py:g || echo \"exit $?\"\n"
                           "kdlab distill a.yaml \\\n  --out runs/a\n", None)
    got = markdown.commands(block)
    assert got[0].heredoc == ("a.yaml", "base: digits-mlp\n")
    assert [c.argv for c in got[1:]] == [["recipes", "a.yaml"], ["doctor", "f.py:g"], ["distill", "a.yaml", "--out", "runs/a"]]
    assert [c.may_fail for c in got] == [False, False, True, False]
    assert markdown.small(got[3].argv)[-4:] == markdown.SMALL_EPOCHS
    markdown.validate(["distill", "digits-mlp", "--epochs", "200", "--out", "runs/x"])
    markdown.validate(["reproduce", "hinton2015", "--seeds", "3", "--data-dir", "DATA"])
    with pytest.raises(KDLabError, match="unrecognized arguments: --epoch-count"):
        markdown.validate(["distill", "digits-mlp", "--epoch-count", "5"])
    with pytest.raises(SystemExit):  # argparse's own refusal: a bad value
        markdown.validate(["distill", "digits-mlp", "--epochs", "many"])
    with pytest.raises(KDLabError, match="temperature"):
        markdown.validate(["distill", "digits-mlp", "-T", "-3"])
    with pytest.raises(AssertionError, match="not-run"):
        markdown.commands(markdown.Block("x.md", 1, "bash", "torchrun -m kdlab distill digits-mlp\n", None))


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_every_example_runs(page, docs_env, capsys):
    todo = markdown.blocks(page)
    text = "".join(b.body for b in todo)
    for needle, module in NEEDS.items():
        if needle in text:
            require(module)
    for block in todo:
        kind = block.marker[0] if block.marker else None
        if kind == "not-run" or block.lang in markdown.OUTPUT:
            continue
        if kind == "save-as":
            (docs_env / block.marker[1]).parent.mkdir(parents=True, exist_ok=True)
            (docs_env / block.marker[1]).write_text(block.body, encoding="utf-8")
        elif block.lang == "python":
            exec(compile(block.body, block.where, "exec"), {"__name__": "__main__"})
            capsys.readouterr()
        else:
            for cmd in markdown.commands(block):
                if kind == "validate-only":
                    try:
                        if not cmd.heredoc:
                            markdown.validate(cmd.argv)
                    except (SystemExit, KDLabError) as exc:  # a renamed flag, a bad recipe value
                        pytest.fail(f"{block.where}: `kdlab {' '.join(cmd.argv)}` does not validate: {exc}")
                    continue
                if cmd.heredoc:
                    (docs_env / cmd.heredoc[0]).write_text(cmd.heredoc[1], encoding="utf-8")
                    continue
                argv = markdown.small(cmd.argv, block)
                code, _, err = run_kdlab(argv, capsys)
                allowed = (0, 1) if cmd.may_fail else (0,)
                assert code in allowed, f"{block.where}: `kdlab {' '.join(argv)}` exited {code}:\n{err[-3000:]}"


def test_recipes_table_matches_the_bundled_recipes():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_recipes_table
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert gen_recipes_table.rewrite(text) == text, "README's recipes table is stale: run python docs/gen_recipes_table.py"
