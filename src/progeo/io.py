"""Atomic writes: a file is either its old content or its complete new content, never half.

Checkpoints, caches, indexes and metrics are written through these helpers, so an
interrupted run never leaves a truncated file where a good one was. The final file gets the
permissions a plain ``open(path, "w")`` of a new file would: ``0o666`` less the process umask
(0644 with umask 022, 0664 with 002), not the 0600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic on
    POSIX file systems. On an exception the temporary file is removed and ``path`` is untouched.
    Whatever wrote the temporary file, ``path`` ends with the mode of a new file (``0o666 & ~umask``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = new_temp_file(path)
    mode = os.stat(tmp_path).st_mode & 0o777  # 0o666 & ~umask, as created
    try:
        yield tmp_path
        if os.stat(tmp_path).st_mode & 0o777 != mode:  # some writers (safetensors) make their file 0600
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def new_temp_file(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty, uniquely named file ``.<name>.<random><suffix>`` beside ``path`` and return it.

    Like :func:`tempfile.mkstemp` (exclusive creation, no clash with another writer), but with mode
    ``0o666`` filtered by the umask, as :func:`open` gives a new file: writers that fill it with
    ``open(tmp, "wb")``, numpy, safetensors or faiss keep that mode, and so does the renamed result.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")  # pragma: no cover


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
