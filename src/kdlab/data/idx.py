"""Strict reader for the IDX format used by MNIST, Fashion-MNIST and KMNIST.

Every way a file can be wrong (not gzip, wrong magic, truncated, extra bytes, wrong count) is
turned into a :class:`DataError` naming the file, instead of a reshape error inside numpy.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import DataError

UBYTE = 0x08
IMAGES_NDIM = 3
LABELS_NDIM = 1


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: cannot decompress ({exc}); the file is corrupt or truncated, delete it and download again"
        ) from None


def read_idx(path: str | Path, ndim: int, count: Optional[int] = None) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions and (optionally) ``count`` items."""
    path = Path(path)
    raw = _read_bytes(path)
    header_len = 4 + 4 * ndim
    if len(raw) < 4:
        raise DataError(f"{path}: file is truncated ({len(raw)} bytes, not even an IDX magic number)")
    zero, dtype_code, file_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != UBYTE or file_ndim != ndim:
        magic = int.from_bytes(raw[:4], "big")
        expected = (UBYTE << 8) | ndim
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} (expected 0x{expected:08x}); "
            "this is not an IDX " + ("image" if ndim == IMAGES_NDIM else "label") + " file"
        )
    if len(raw) < header_len:
        raise DataError(f"{path}: file is truncated ({len(raw)} bytes, header alone needs {header_len})")
    dims: Tuple[int, ...] = struct.unpack(f">{ndim}I", raw[4:header_len])
    if count is not None and dims[0] != count:
        raise DataError(f"{path}: header says {dims[0]} items, expected {count}; wrong or mixed-up file")
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header_len
    if payload != expected_bytes:
        what = "truncated" if payload < expected_bytes else "longer than its header says"
        raise DataError(
            f"{path}: file is {what} ({payload} data bytes, header {dims} needs {expected_bytes}); "
            "delete it and download again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)
