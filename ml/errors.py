"""Exceptions of the `ml` package."""


class MLError(Exception):
    """Base of every error raised by `ml`."""


class SliceError(MLError):
    """A slice that cannot be turned into model input (undecodable, corrupt, unsupported)."""


class ModelError(MLError):
    """A model or checkpoint that cannot be built, loaded or run as asked."""
