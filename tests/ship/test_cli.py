"""The ship commands are listed, explain themselves, and refuse bad flags in one line."""

import pytest

from kdlab.cli import main


@pytest.mark.parametrize("command,words", [("export", ["onnxruntime", "--normalization", "raw pixels", "training-only"]),
                                           ("profile", ["FLOPs", "int8", "batch 1 and 64", "thread count", "RECIPE"])])
def test_help_explains(command, words, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    # argparse wraps at the terminal's width and may break a line after a hyphen ("training-" / "only")
    out = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    assert info.value.code == 0 and out.startswith(f"usage: kdlab {command}")
    assert all(w in out for w in words)


def test_listed_in_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "export" in out and "profile" in out


@pytest.mark.parametrize("args", [["export", "x", "--onnx", "y.onnx", "--opset", "7"], ["profile", "--threads", "0"],
                                  ["export", "x", "--normalization", "none"]])
def test_bad_flags_one_line_exit_2(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
