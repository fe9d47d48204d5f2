import os

import pytest

from kdlab.utils import atomic_write, atomic_write_text


def test_atomic_write_gives_normal_permissions_and_no_leftovers(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.txt", boom)
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_check_output_location_refuses_files_and_creates_nothing(tmp_path):
    import pytest

    from kdlab.errors import KDLabError
    from kdlab.utils import check_output_location

    (tmp_path / "f").write_text("x")
    assert check_output_location(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    with pytest.raises(KDLabError, match="is a file"):
        check_output_location(tmp_path / "f")
    with pytest.raises(KDLabError, match="which is a file"):
        check_output_location(tmp_path / "f" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
