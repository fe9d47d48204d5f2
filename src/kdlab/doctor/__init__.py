"""Check a user's KD loss function against the Hinton loss and name the pitfall it matches."""

from .calling import adapt, load_function, parse_args
from .diagnose import Diagnosis, diagnose

__all__ = ["Diagnosis", "adapt", "diagnose", "load_function", "parse_args"]
