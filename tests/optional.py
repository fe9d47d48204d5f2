"""Optional libraries in tests: skipped on a developer machine without them, required in CI.

CI installs torchvision and timm (see the workflow), so there a missing library is a failure, not
a silently green skip; locally ``pip install torch==2.14.1 torchvision==0.29.1 timm`` runs them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str) -> ModuleType:
    """Import ``module``; if it is missing (or broken), skip outside CI and fail inside CI."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # torchvision built for another torch raises at import, not ModuleNotFoundError
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {module} ({type(exc).__name__}: {exc})")
        pytest.skip(f"{module} not importable ({type(exc).__name__}); pip install torch==2.14.1 torchvision==0.29.1 timm")
