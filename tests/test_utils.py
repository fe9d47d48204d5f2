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


def test_file_digest_equals_hashlib_over_the_whole_file(tmp_path):
    import hashlib

    from kdlab.utils import file_digest

    path = tmp_path / "blob"
    payload = bytes(range(256)) * 8193  # over 2 MiB: several chunks and a partial last one
    path.write_bytes(payload)
    assert file_digest(path) == hashlib.sha256(payload).hexdigest()
    assert file_digest(str(path), "md5") == hashlib.md5(payload).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
