import gzip

import numpy as np
import pytest

from kdlab import DataError
from kdlab.data.idx import read_idx
from tests.conftest import write_idx


def test_reads_valid_files(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    path = write_idx(tmp_path / "x.gz", arr)
    out = read_idx(path, 3, count=2)
    assert out.shape == (2, 3, 4) and (out == arr).all()
    plain = write_idx(tmp_path / "y", np.arange(5), compress=False)
    assert list(read_idx(plain, 1, count=5)) == [0, 1, 2, 3, 4]


def test_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.arange(5))
    with pytest.raises(DataError, match="wrong magic number 0x00000801 .expected 0x00000803"):
        read_idx(path, 3)


def test_wrong_count(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((3, 2, 2)))
    with pytest.raises(DataError, match="header says 3 items, expected 60000"):
        read_idx(path, 3, count=60000)


def test_truncated_payload(tmp_path):
    path = tmp_path / "t.gz"
    raw = write_idx(tmp_path / "full", np.zeros((4, 5, 5)), compress=False).read_bytes()
    with gzip.open(path, "wb") as fh:
        fh.write(raw[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, 3, count=4)


def test_truncated_gzip_stream(tmp_path):
    full = write_idx(tmp_path / "full.gz", np.random.default_rng(0).integers(0, 256, (50, 28, 28)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(full.read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot decompress"):
        read_idx(cut, 3)


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "bogus.gz"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="corrupt"):
        read_idx(path, 1)


def test_header_shorter_than_needed(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, 1)
