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
]
