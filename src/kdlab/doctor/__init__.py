"""Check a user's KD loss function against the Hinton loss and name the pitfall it matches."""

from .calling import Adapted, adapt, load_function, parse_args, parse_values
from .diagnose import Diagnosis, diagnose
from .probes import Layout, parse_layout

__all__ = ["Adapted", "Diagnosis", "Layout", "adapt", "diagnose", "load_function", "parse_args", "parse_layout", "parse_values"]
