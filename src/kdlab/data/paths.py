"""Where kdlab keeps datasets (and, beside them, its other caches), shared by every loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_VAR = "KDLAB_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 30


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdlab"


def data_root(data_dir: Optional[os.PathLike | str] = None) -> Path:
    """The folder kdlab reads datasets from: argument > $KDLAB_DATA_DIR > user cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_cache_dir()
