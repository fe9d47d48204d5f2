"""One exception type for every user-facing mistake.

The CLI turns a :class:`KDLabError` into a single line on stderr and exit code 2, so each
message must name the problem *and* the fix on its own, without a traceback.
"""


class KDLabError(Exception):
    """A problem the user can fix (bad config, missing data, corrupt file, ...)."""


class ConfigError(KDLabError):
    """A recipe or command-line value is unknown, mistyped or out of range."""


class DataError(KDLabError):
    """A dataset is missing, truncated or not what its name claims."""


class CheckpointError(KDLabError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class ExportError(KDLabError):
    """A model cannot be exported, or the exported file does not reproduce PyTorch's outputs."""
