"""The errors pvae raises for bad input: each names the problem and the fix."""


class PvaeError(Exception):
    """Base class: an error a user can fix; the CLI prints it without a traceback. ``fields``
    are the arguments the message names (written as Python's ``name`` or ``name=True``), which
    the command line shows as its flags."""

    def __init__(self, message: str, *fields: str):
        super().__init__(message)
        self.fields = fields


class DataError(PvaeError, ValueError):
    """Data of the wrong shape, outside the likelihood's support, or not finite."""


class ConfigError(PvaeError, ValueError):
    """A nonsensical flag or argument, such as an unknown prior name."""


class CheckpointError(PvaeError):
    """A checkpoint that is missing, corrupt, or written for another configuration."""


class DivergenceError(PvaeError, FloatingPointError):
    """The loss or a parameter became NaN/Inf during training."""


class StorageError(PvaeError, OSError):
    """A file could not be written (a full disk); what was there before is intact."""
