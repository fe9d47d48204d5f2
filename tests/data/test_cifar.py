"""CIFAR-10/100 loading on tiny datasets written in the genuine python-pickle format."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from kdlab.data import DATASETS, load_dataset
from kdlab.data import cifar
from kdlab.errors import DataError


def genuine_pickle(obj: object) -> bytes:
    """Protocol 2 with the ``numpy.core.multiarray`` spelling of the Python-2 originals."""
    raw = pickle.dumps(obj, protocol=2)
    return raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def make_batch(n: int, seed: int, label_key: str, num_classes: int) -> Dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, spec: cifar.CifarSpec, n: int = 4) -> Dict[str, Dict[bytes, object]]:
    """Tiny ``spec`` files under ``root/<archive folder>``; returns what was written per file."""
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, name in enumerate((*spec.train_files, spec.test_file)):
        written[name] = make_batch(n, i, spec.label_key, spec.num_classes)
        (folder / name).write_bytes(genuine_pickle(written[name]))
    names = [f"class_{i}".encode() for i in range(spec.num_classes)]
    (folder / spec.meta_file).write_bytes(genuine_pickle({spec.names_key.encode(): names, b"num_cases_per_batch": n}))
    return written


def test_genuine_pickles_reference_only_allowed_numpy_globals():
    import pickletools

    raw = genuine_pickle(make_batch(2, 0, "labels", 10))
    globals_used = {tuple(arg.split(" ")) for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert ("numpy.core.multiarray", "_reconstruct") in globals_used  # the Python-2 spelling is exercised
    assert globals_used <= cifar.ALLOWED_GLOBALS


@pytest.mark.parametrize("spec", [cifar.CIFAR10, cifar.CIFAR100], ids=lambda s: s.name)
def test_loads_pixels_in_channel_height_width_order_and_labels(tmp_path, spec):
    written = write_cifar(tmp_path, spec)
    first = written[spec.train_files[0]]
    first[b"data"][1, 1 * 1024 + 5 * 32 + 7] = 251  # green plane, row 5, column 7 of image 1
    (tmp_path / spec.folder / spec.train_files[0]).write_bytes(genuine_pickle(first))

    raw = DATASETS.get(spec.name)(tmp_path, False)
    n_train = 4 * len(spec.train_files)
    assert raw.train_x.shape == (n_train, 3, 32, 32) and raw.train_x.dtype == torch.uint8
    assert raw.test_x.shape == (4, 3, 32, 32) and raw.train_y.dtype == torch.int64
    assert int(raw.train_x[1, 1, 5, 7]) == 251
    expected = np.concatenate([written[f][b"data"] for f in spec.train_files]).reshape(-1, 3, 32, 32)
    assert np.array_equal(raw.train_x.numpy(), expected)
    labels = sum((written[f][spec.label_key.encode()] for f in spec.train_files), [])
    assert raw.train_y.tolist() == labels
    assert raw.test_y.tolist() == written[spec.test_file][spec.label_key.encode()]
    assert raw.classes == [f"class_{i}" for i in range(spec.num_classes)]
    assert raw.source == str(tmp_path / spec.folder)


def test_load_dataset_gives_normalised_rgb_splits_from_either_layout(tmp_path):
    write_cifar(tmp_path / "cifar10", cifar.CIFAR10, n=5)  # root/cifar10/cifar-10-batches-py also works
    splits = load_dataset("cifar10", tmp_path, download=False, val_fraction=0.2)
    assert splits.in_shape == (3, 32, 32) and splits.num_classes == 10
    assert len(splits.train) == 20 and len(splits.val) == 5 and len(splits.test) == 5


def test_protocol_5_files_resaved_by_numpy_2_load(tmp_path):
    write_cifar(tmp_path, cifar.CIFAR10)
    batch = make_batch(3, 9, "labels", 10)
    (tmp_path / cifar.CIFAR10.folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))
    raw = DATASETS.get("cifar10")(tmp_path, False)
    assert np.array_equal(raw.test_x.numpy().reshape(3, -1), batch[b"data"])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_malicious_batch_is_refused_without_running(tmp_path, payload):
    write_cifar(tmp_path, cifar.CIFAR10)
    marker = tmp_path / "pwned"
    if payload == "os.system":
        evil = pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2)
    else:
        evil = pickle.dumps(eval, protocol=2)  # noqa: S307  (only pickled, never called)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
    with pytest.raises(DataError, match=r"data_batch_1 is not a CIFAR python pickle \(UnpicklingError: refused global"):
        DATASETS.get("cifar10")(tmp_path, False)
    assert not marker.exists()


@pytest.mark.parametrize("damage,message", [
    (lambda d: d.update({b"data": d[b"data"][:, :100]}), r"data is uint8 \(4, 100\), expected uint8 \(N, 3072\)"),
    (lambda d: d.update({b"labels": [0, 1]}), r"2 labels for 4 images"),
    (lambda d: d.update({b"labels": [0, 1, 2, 10]}), r"label 10 out of range for 10 classes"),
    (lambda d: d.pop(b"labels"), r"lacks 'data' or 'labels'"),
])
def test_damaged_batches_are_one_line_data_errors(tmp_path, damage, message):
    written = write_cifar(tmp_path, cifar.CIFAR10)
    batch = written["data_batch_3"]
    damage(batch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(genuine_pickle(batch))
    with pytest.raises(DataError, match=message):
        DATASETS.get("cifar10")(tmp_path, False)


def test_truncated_file_is_a_data_error(tmp_path):
    write_cifar(tmp_path, cifar.CIFAR100)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"train is not a CIFAR python pickle .*delete it"):
        DATASETS.get("cifar100")(tmp_path, False)


def test_missing_files_name_folder_and_files_without_downloading(tmp_path):
    with pytest.raises(DataError) as err:
        DATASETS.get("cifar100")(tmp_path, False)
    msg = str(err.value)
    assert f"train, test, meta not found in {tmp_path / 'cifar-100-python'} and downloads are disabled" in msg
    assert "cifar-100-python.tar.gz" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def _archive(spec: cifar.CifarSpec, source: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in spec.filenames():
            tar.add(source / spec.folder / name, arcname=f"{spec.folder}/{name}")
    return buf.getvalue()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_checks_md5_and_extracts_only_known_files(tmp_path, monkeypatch):
    written = write_cifar(tmp_path / "src", cifar.CIFAR10)
    payload = _archive(cifar.CIFAR10, tmp_path / "src")
    urls = []
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda url, timeout: urls.append(url) or _Response(payload))
    root = tmp_path / "data"

    wrong = dataclasses.replace(cifar.CIFAR10, md5="0" * 32)
    with pytest.raises(DataError, match=r"download failed \(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: md5"):
        cifar.load_cifar(wrong, root, True)
    assert not (root / "cifar-10-batches-py").exists() and list(root.iterdir()) == []  # temp archive removed

    right = dataclasses.replace(cifar.CIFAR10, md5=hashlib.md5(payload).hexdigest())
    raw = cifar.load_cifar(right, root, True)
    assert urls == [cifar.CIFAR10.url] * 2
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(cifar.CIFAR10.filenames())
    assert raw.test_y.tolist() == written["test_batch"][b"labels"]


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"cifar10: data_batch_1, .* not found in .* and download failed "
                                        r"\(\[Errno -3\] Temporary failure in name resolution\); unpack"):
        DATASETS.get("cifar10")(tmp_path, True)
