import hashlib
from dataclasses import replace

import pytest
import torch

from kdlab import DataError
from kdlab.data import load_dataset
from kdlab.data.mnist_family import FILE_KEYS, MNIST, data_root, load_idx_dataset
from tests.conftest import write_fake_mnist


def small_spec(**kw):
    return replace(MNIST, n_train=60, n_test=20, **kw)


def test_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("KDLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "kdlab"
    monkeypatch.setenv("KDLAB_DATA_DIR", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"


def test_finds_dataset_subfolder_and_direct_folder(tmp_path):
    write_fake_mnist(tmp_path / "root" / "mnist")
    raw = load_idx_dataset(small_spec(), tmp_path / "root", download=False)
    assert raw.train_x.shape == (60, 28, 28) and raw.test_y.shape == (20,)
    assert raw.train_y.dtype == torch.int64
    write_fake_mnist(tmp_path / "direct")
    assert load_idx_dataset(small_spec(), tmp_path / "direct", download=False).train_x.shape[0] == 60


def test_env_var_is_used(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "envroot" / "mnist")
    monkeypatch.setenv("KDLAB_DATA_DIR", str(tmp_path / "envroot"))
    assert load_idx_dataset(small_spec(), None, download=False).source == str(tmp_path / "envroot" / "mnist")


def test_missing_files_one_line_error_names_folder_and_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_idx_dataset(small_spec(), tmp_path, download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "mnist") in msg
    for name in MNIST.filenames():
        assert name in msg


def test_download_verifies_md5_and_writes_files(tmp_path):
    mirror = write_fake_mnist(tmp_path / "mirror")
    files = {k: (MNIST.files[k][0], hashlib.md5((mirror / MNIST.files[k][0]).read_bytes()).hexdigest()) for k in FILE_KEYS}
    spec = small_spec(mirrors=(mirror.as_uri() + "/",), files=files)
    raw = load_idx_dataset(spec, tmp_path / "data", download=True)
    assert raw.train_x.shape[0] == 60
    assert all((tmp_path / "data" / "mnist" / MNIST.files[k][0]).is_file() for k in FILE_KEYS)


def test_download_with_wrong_md5_fails_and_leaves_nothing(tmp_path):
    mirror = write_fake_mnist(tmp_path / "mirror")
    spec = small_spec(mirrors=(mirror.as_uri() + "/",))  # real MNIST md5s do not match fake files
    with pytest.raises(DataError, match="download failed .*md5"):
        load_idx_dataset(spec, tmp_path / "data", download=True)
    assert not any((tmp_path / "data").rglob("*.gz"))


def test_unreachable_mirror_error(tmp_path):
    spec = small_spec(mirrors=((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(DataError, match="download failed"):
        load_idx_dataset(spec, tmp_path / "data", download=True)


def test_real_mnist(real_data):
    data = load_dataset("mnist", real_data, download=False)
    assert data.train.x.shape == (60000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.x.dtype == torch.float32
    counts = torch.bincount(data.train.y).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(data.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(data.train.x.mean())) < 1e-3 and abs(float(data.train.x.std()) - 1) < 1e-3
    assert data.info["mean"] == pytest.approx(0.1307, abs=1e-4) and data.info["std"] == pytest.approx(0.3081, abs=1e-4)


def test_real_fashion_mnist(real_data):
    data = load_dataset("fashion-mnist", real_data, download=False)
    assert torch.bincount(data.train.y).tolist() == [6000] * 10
    assert data.classes[9] == "Ankle boot"
