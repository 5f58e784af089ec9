"""Exceptions that the command line turns into a one-line message instead of a traceback.

Every error raised for bad user input derives from :class:`ProgeoError` and its message
names the offending file or value *and* says how to fix it. :func:`reading` turns what a
truncated or overwritten file raises while it is parsed (safetensors, JSON/YAML, faiss, numpy,
zip, UTF-8 errors...) into such an error naming the file and how to rebuild it.
"""

import re
from contextlib import contextmanager


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


# -- unreadable files ---------------------------------------------------------------------------

#: What a truncated, overwritten or foreign file raises while it is parsed (besides the
#: libraries' own classes checked in :func:`is_read_error`): OSError (incl. zipfile's),
#: ValueError (json, numpy, UnicodeDecodeError), EOFError, RuntimeError (faiss, torch), and the
#: lookups of a file whose structure is wrong (KeyError, TypeError, AttributeError).
_READ_ERRORS = (OSError, ValueError, EOFError, RuntimeError, KeyError, TypeError, AttributeError, MemoryError)
_FAISS_PREFIX = re.compile(r"^Error in .*? at \S+:\d+: (Error: )?")


def is_read_error(exc: BaseException) -> bool:
    """True for the exceptions that reading a damaged or foreign file raises."""
    import csv
    import pickle
    import struct
    import zipfile

    if isinstance(exc, (*_READ_ERRORS, zipfile.BadZipFile, pickle.UnpicklingError, struct.error, csv.Error)):
        return True
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return type(exc).__name__ == "SafetensorError"  # safetensors' Rust-side error (no import needed)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text, without faiss's C++ location prefix, at most ``limit`` chars."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    import json

    if isinstance(exc, KeyError):
        text = f"no {text}"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"not valid JSON: {text}"
    elif isinstance(exc, UnicodeDecodeError):
        text = f"not UTF-8 text: {text}"
    elif type(exc).__module__.startswith("yaml"):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        text = f"not valid YAML: {getattr(exc, 'problem', None) or text}{where}"
    elif "pickled (object) data" in text:  # numpy's word for a file without its magic number
        text = "not a NumPy .npy/.npz file"
    text = _FAISS_PREFIX.sub("", text)
    if len(text) > limit:
        text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable(path, what: str, reason: str | None, fix: str, error: type[ProgeoError] = DatasetError) -> ProgeoError:
    """The one-line error for file ``path`` (a ``what``) that cannot be read (``reason``; None: it
    does not exist): names it, says what is wrong and the fix."""
    problem = "is missing" if reason is None else f"is unreadable: truncated or corrupt ({reason})"
    exc = error(f"{what} {path} {problem}; {fix}")
    exc.unreadable = (str(path), what, reason)  # type: ignore[attr-defined]  # read by advise()
    return exc


@contextmanager
def reading(path, what: str, fix: str, error: type[ProgeoError] = DatasetError):
    """Parse file ``path`` inside this block: a damaged file raises ``error`` with one line naming
    the file, what is wrong and ``fix`` (how to rebuild it), instead of the library's traceback.

    ``what`` names the kind of file ("saved model weights", "faiss index"...). ProgeoErrors and
    programming errors outside :func:`is_read_error` pass through unchanged. Keep the block to the
    read itself so that a bug in later code is not reported as a damaged file.
    """
    try:
        yield
    except ProgeoError:
        raise
    except Exception as exc:
        if not is_read_error(exc):
            raise
        reason = None if isinstance(exc, FileNotFoundError) else short_reason(exc)
        raise unreadable(path, what, reason, fix, error) from exc


@contextmanager
def advise(fix: str):
    """Inside this block, an unreadable-file error (from :func:`reading`) advises ``fix`` instead of
    its own, e.g. "rebuild the index" for the model and descriptors copied into an index folder."""
    try:
        yield
    except ProgeoError as exc:
        marked = getattr(exc, "unreadable", None)
        if marked is None:
            raise
        raise unreadable(*marked, fix, type(exc)) from exc.__cause__
