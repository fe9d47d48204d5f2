"""MNIST, Fashion-MNIST and KMNIST from their four standard IDX ``.gz`` files.

Where the files are looked for, in order: the ``data_dir`` argument (``--data-dir``), the
``KDLAB_DATA_DIR`` environment variable, then the user cache (``$XDG_CACHE_HOME/kdlab`` or
``~/.cache/kdlab``). Each names a folder holding one sub-folder per dataset (``mnist/``,
``fashion-mnist/``, ``kmnist/``); a folder that directly holds the four files also works.
Missing files are downloaded (md5-verified, written atomically) into that folder.
"""

from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import DataError
from ..utils import atomic_write
from .idx import IMAGES_NDIM, LABELS_NDIM, read_idx
from .paths import DOWNLOAD_TIMEOUT_S, ENV_VAR, data_root
from .registry import DATASETS, SHAPES, DatasetShape, RawData

FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class IDXDataset:
    name: str
    mirrors: Tuple[str, ...]
    files: Dict[str, Tuple[str, str]]  # key -> (file name, md5 of the .gz)
    classes: Tuple[str, ...]
    n_train: int = 60000
    n_test: int = 10000

    def filenames(self) -> List[str]:
        return [self.files[k][0] for k in FILE_KEYS]


MNIST = IDXDataset(
    "mnist",
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {
        "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    tuple(str(i) for i in range(10)),
)
FASHION_MNIST = IDXDataset(
    "fashion-mnist",
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {
        "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)
KMNIST = IDXDataset(
    "kmnist",
    ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    {
        "train_images": ("train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
        "train_labels": ("train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
        "test_images": ("t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
        "test_labels": ("t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134"),
    },
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
)


def _existing(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def locate(spec: IDXDataset, root: Path) -> Tuple[Path, Dict[str, Optional[Path]]]:
    """The dataset folder under ``root`` and the paths of the files found there."""
    for folder in (root / spec.name, root):
        found = {k: _existing(folder, spec.files[k][0]) for k in FILE_KEYS}
        if all(found.values()):
            return folder, found
    folder = root / spec.name
    return folder, {k: _existing(folder, spec.files[k][0]) for k in FILE_KEYS}


def download_file(mirrors: Tuple[str, ...], filename: str, md5: str, dest: Path) -> None:
    """Fetch ``filename`` from the first mirror that serves it with the right md5."""
    errors = []
    for mirror in mirrors:
        url = mirror + filename
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                payload = resp.read()
        except Exception as exc:  # network errors come in many types; all mean "try the next mirror"
            errors.append(f"{url}: {exc}")
            continue
        got = hashlib.md5(payload).hexdigest()
        if got != md5:
            errors.append(f"{url}: md5 {got} != expected {md5}")
            continue
        atomic_write(dest, lambda fh: fh.write(payload))
        return
    raise OSError("; ".join(errors) or "no mirror configured")


def load_idx_dataset(spec: IDXDataset, data_dir: Optional[Path], download: bool) -> RawData:
    root = data_root(data_dir)
    folder, found = locate(spec, root)
    missing = [spec.files[k][0] for k in FILE_KEYS if found[k] is None]
    if missing:
        reason = "downloads are disabled"
        if download:
            try:
                for key in FILE_KEYS:
                    if found[key] is None:
                        name, md5 = spec.files[key]
                        download_file(spec.mirrors, name, md5, folder / name)
                        found[key] = folder / name
                missing = []
            except OSError as exc:
                reason = f"download failed ({str(exc).splitlines()[0][:200]})"
        if missing:
            raise DataError(
                f"{spec.name}: {', '.join(missing)} not found in {folder} and {reason}; put the four files "
                f"{', '.join(spec.filenames())} there, or point --data-dir / {ENV_VAR} at a folder holding {spec.name}/"
            )
    paths = {k: p for k, p in found.items() if p is not None}
    train_x = read_idx(paths["train_images"], IMAGES_NDIM, spec.n_train)
    train_y = read_idx(paths["train_labels"], LABELS_NDIM, spec.n_train)
    test_x = read_idx(paths["test_images"], IMAGES_NDIM, spec.n_test)
    test_y = read_idx(paths["test_labels"], LABELS_NDIM, spec.n_test)
    for key, labels in (("train_labels", train_y), ("test_labels", test_y)):
        if labels.max() >= len(spec.classes):
            raise DataError(f"{paths[key]}: label {int(labels.max())} out of range for {len(spec.classes)} classes")
    as_t = lambda a: torch.from_numpy(a.copy())  # noqa: E731  (frombuffer arrays are read-only)
    return RawData(
        as_t(train_x), as_t(train_y).long(), as_t(test_x), as_t(test_y).long(), list(spec.classes), str(folder)
    )


def _register(spec: IDXDataset) -> None:
    DATASETS.register(spec.name)(lambda data_dir=None, download=True: load_idx_dataset(spec, data_dir, download))
    SHAPES.register(spec.name)(DatasetShape((1, 28, 28), len(spec.classes)))


for _spec in (MNIST, FASHION_MNIST, KMNIST):
    _register(_spec)
