"""kdlab — knowledge distillation for PyTorch, correct by construction and fast on a CPU."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, KDLabError  # noqa: E402
from .losses.kd import kd_loss  # noqa: E402

__all__ = [
    "__version__",
    "KDLabError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "kd_loss",
    "distill",
]


def __getattr__(name: str):  # lazy: `import kdlab` stays light for the command line
    if name in ("distill", "DistillResult"):
        from . import api  # start-up time: `import kdlab` (and the CLI) stay light

        return getattr(api, name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
