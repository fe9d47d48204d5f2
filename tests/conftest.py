"""Shared fixtures: synthetic IDX files and the real MNIST files from ../shared/data."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray, magic_ndim: int | None = None, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file; ``magic_ndim`` lets tests forge a wrong header."""
    ndim = array.ndim if magic_ndim is None else magic_ndim
    header = struct.pack(">HBB", 0, 0x08, ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fake_mnist(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    return folder


def real_data_root() -> Path | None:
    for candidate in (os.environ.get("KDLAB_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture
def real_data() -> Path:
    """The genuine MNIST files. CI provides them; a missing copy there is a failure, not a skip."""
    root = real_data_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide MNIST via KDLAB_DATA_DIR or ../shared/data")
        pytest.skip("real MNIST not available (set KDLAB_DATA_DIR)")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache; never download during tests unless a test asks for it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def digits():
    """The embedded digits data as the digits-mlp recipe loads them (read-only; shared by the tests)."""
    from kdlab.pipeline import prepare_data
    from kdlab.recipes import load_recipe

    return prepare_data(load_recipe("digits-mlp"))
