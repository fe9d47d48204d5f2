"""Models by name. Importing this package registers every built-in architecture."""

from . import cifar, cnn, mlp, resnet_cifar, zoo  # noqa: F401  (registration)
from .registry import MODELS, build_model, check_model_params, count_parameters, model_params

__all__ = ["MODELS", "build_model", "check_model_params", "count_parameters", "model_params"]
