"""Errors that users see. Each message names the file, the entry or the id, and what to do."""


class SdfnError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class DataError(SdfnError):
    """A data set, catalog or annotation file is missing, malformed or inconsistent."""


class ImageError(DataError):
    """An image cannot be read: missing, corrupt, not an image, or too large to decode safely."""


class ConfigError(SdfnError):
    """A configuration, preset or command-line override is invalid."""


class CheckpointError(SdfnError):
    """A checkpoint is missing, incomplete, or belongs to another model configuration."""
