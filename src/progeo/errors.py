"""Exceptions that the command line turns into a one-line message instead of a traceback.

Every error raised for bad user input derives from :class:`ProgeoError` and its message
names the offending file or value *and* says how to fix it.
"""


class ProgeoError(Exception):
    """Base class for errors caused by user input (paths, files, options)."""


class DatasetError(ProgeoError):
    """A dataset folder, image list or file name is missing or malformed."""


class ImageDecodeError(DatasetError):
    """An image file is truncated or cannot be decoded."""


class CheckpointError(ProgeoError):
    """A model file is missing, of the wrong kind, or does not match the architecture."""


class ConfigError(ProgeoError):
    """An option or configuration file has an invalid value."""


class FolderInUseError(ProgeoError):
    """An output folder is locked by another running progeo process (see :mod:`progeo.locks`)."""
