"""CIFAR-10 and CIFAR-100 from their official python pickles (the torchvision dataset layout).

Where: the same data root as MNIST (``--data-dir`` > ``KDLAB_DATA_DIR`` > user cache) holding
``cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``)
or ``cifar-100-python/`` (``train``, ``test``, ``meta``), exactly as torchvision leaves them, so one
folder serves both libraries. Missing files are downloaded (the official tar.gz, md5-checked,
each file written atomically) when downloads are allowed.

The files are pickles, and unpickling runs whatever a file names: a planted ``data_batch_1``
could run code. :class:`CifarUnpickler` only resolves the few numpy globals genuine CIFAR files
(and re-saved copies) reference and refuses anything else with one line.
"""

from __future__ import annotations

import _codecs
import hashlib
import importlib
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from ..utils import atomic_write
from .paths import DOWNLOAD_TIMEOUT_S, ENV_VAR, data_root
from .registry import DATASETS, SHAPES, DatasetShape, RawData

IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    name: str
    folder: str  # the folder the official archive unpacks to
    url: str
    md5: str  # of the tar.gz
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int

    def filenames(self) -> List[str]:
        return [*self.train_files, self.test_file, self.meta_file]


CIFAR10 = CifarSpec(
    "cifar10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", "label_names", 10,
)
CIFAR100 = CifarSpec(
    "cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test", "meta",
    "fine_labels", "fine_label_names", 100,
)

# (module, name) a CIFAR pickle may reference. Python-2 originals say numpy.core.*; numpy 2 moved
# it to numpy._core.*; protocol-2 files written by Python 3 encode bytes via _codecs.encode and
# protocol-5 files rebuild arrays with _frombuffer. None of these can run arbitrary code.
_NUMPY_CORE = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}
ALLOWED_GLOBALS = frozenset(
    {(f"numpy.{core}.{sub}", name) for core in ("core", "_core") for sub, name in _NUMPY_CORE}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`; anything else is refused unrun."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if module == "_codecs":
            return _codecs.encode
        if module == "numpy":
            return getattr(np, name)
        sub = module.rsplit(".", 1)[1]  # resolve either spelling in the installed numpy, no shim warnings
        for core in ("numpy._core", "numpy.core"):
            try:
                return getattr(importlib.import_module(f"{core}.{sub}"), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy {np.__version__} has no {module}.{name}")


def read_pickle(path: Path) -> Dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (Python-2 files: latin-1, like torchvision)."""
    try:
        with open(path, "rb") as fh:
            obj = CifarUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # refused globals, truncation and garbage raise many types
        first = (str(exc).splitlines() or [""])[0][:160]
        raise DataError(f"{path} is not a CIFAR python pickle ({type(exc).__name__}: {first}); "
                        f"delete it and let kdlab download the dataset again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict; delete it and download again")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_batch(path: Path, spec: CifarSpec) -> Tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one batch file, checked."""
    d = read_pickle(path)
    if "data" not in d or spec.label_key not in d:
        raise DataError(f"{path} lacks 'data' or {spec.label_key!r}; is it a {spec.name} file? delete it and download again")
    data, labels = np.asarray(d["data"]), np.asarray(d[spec.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, {PIXELS}); delete it and download again")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images; delete it and download again")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: label {int(labels.max())} out of range for {spec.num_classes} classes; delete it and download again")
    # rows are the R, G and B planes, each 32×32 row-major: a plain reshape gives (N, C, H, W)
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_class_names(path: Path, spec: CifarSpec) -> List[str]:
    d = read_pickle(path)
    names = d.get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise DataError(f"{path}: expected {spec.num_classes} names under {spec.names_key!r}; delete it and download again")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def locate(spec: CifarSpec, root: Path) -> Path:
    """``root/<archive folder>`` (torchvision's layout), else ``root/<name>/<archive folder>``."""
    for folder in (root / spec.folder, root / spec.name / spec.folder):
        if all((folder / f).is_file() for f in spec.filenames()):
            return folder
    return root / spec.folder


def download_and_extract(spec: CifarSpec, folder: Path) -> None:
    """Fetch the official archive, check its md5, and write each expected member atomically.

    Only the known member names are extracted (no path from the archive is trusted), and the
    archive is streamed to a temporary file next to the data, removed afterwards.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder.parent) as tmp:
        md5 = hashlib.md5()
        with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                md5.update(chunk)
                tmp.write(chunk)
        if md5.hexdigest() != spec.md5:
            raise OSError(f"{spec.url}: md5 {md5.hexdigest()} != expected {spec.md5}")
        tmp.seek(0)
        with tarfile.open(fileobj=tmp, mode="r:gz") as tar:
            for name in spec.filenames():
                member = tar.extractfile(f"{spec.folder}/{name}")
                if member is None:
                    raise OSError(f"{spec.url}: archive lacks {spec.folder}/{name}")
                payload = member.read()
                atomic_write(folder / name, lambda fh: fh.write(payload))


def load_cifar(spec: CifarSpec, data_dir: Optional[Path], download: bool) -> RawData:
    root = data_root(data_dir)
    folder = locate(spec, root)
    missing = [f for f in spec.filenames() if not (folder / f).is_file()]
    if missing:
        reason = "downloads are disabled"
        if download:
            try:
                download_and_extract(spec, folder)
                missing = []
            except (OSError, tarfile.TarError, EOFError) as exc:
                reason = f"download failed ({(str(exc).splitlines() or [''])[0][:200]})"
        if missing:
            raise DataError(
                f"{spec.name}: {', '.join(missing)} not found in {folder} and {reason}; unpack {spec.url} "
                f"into {root} (it holds {spec.folder}/), or point --data-dir / {ENV_VAR} at a folder holding {spec.folder}/"
            )
    train = [read_batch(folder / f, spec) for f in spec.train_files]
    test_x, test_y = read_batch(folder / spec.test_file, spec)
    classes = read_class_names(folder / spec.meta_file, spec)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return RawData(
        as_t(np.concatenate([x for x, _ in train])), as_t(np.concatenate([y for _, y in train])),
        as_t(test_x), as_t(test_y), classes, str(folder),
    )


for _spec in (CIFAR10, CIFAR100):
    DATASETS.register(_spec.name)(lambda data_dir=None, download=True, _s=_spec: load_cifar(_s, data_dir, download))
    SHAPES.register(_spec.name)(DatasetShape((3, 32, 32), _spec.num_classes))
