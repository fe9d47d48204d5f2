"""Shipping the student: export it (ONNX, TorchScript) checked against PyTorch, and profile its cost.

``export_onnx`` / ``export_torchscript`` back ``kdlab export``; ``profile_run`` / ``profile_recipe``
back ``kdlab profile``. Importing this package imports neither onnx nor onnxruntime.
"""

from .export import ExportResult, RawPixelInput, export_onnx, export_torchscript
from .profile import ModelProfile, Profile, profile_models, profile_recipe, profile_run
from .source import LoadedModel, load_student

__all__ = ["ExportResult", "LoadedModel", "RawPixelInput", "export_onnx", "export_torchscript", "load_student",
           "ModelProfile", "Profile", "profile_models", "profile_recipe", "profile_run"]
