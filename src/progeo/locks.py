"""One writer per output folder: an OS-level lock on ``FOLDER/.progeo.lock``.

Every command that writes a folder (a training run, ``eval --out`` and ``--save-descriptors``,
``index build --out``, ``zeroshot`` / ``probe`` outputs, the demo) holds that folder's lock for as
long as it writes. A second progeo process that wants the same folder is refused at once with a
:class:`~progeo.errors.FolderInUseError` (exit code 2) naming the folder and the holder's PID,
host and command line, which the holder writes into the lock file.

The lock is ``flock(2)`` on the open lock file, so the kernel releases it when the holder exits in
any way, SIGKILL and crashes included; a lock file left behind by a killed process is not a lock
(the next writer takes it over). A clean exit removes the file. Within one process the lock is
re-entrant (a command may lock a folder its caller holds).

Platforms: Linux, macOS and the BSDs (``fcntl.flock``). On network file systems the lock is as good
as the mount's lock support: Linux NFS clients map ``flock`` onto NFS byte-range locks, which all
clients see; some FUSE/SMB mounts and very old NFS setups do not lock across machines. Without
``fcntl`` (Windows) folders are not locked: one warning says so and the writes go ahead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from progeo.errors import ConfigError, FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".progeo.lock"
_held: dict[str, list] = {}  # resolved folder -> [fd, depth] of the locks this process holds
_warned = False


def _holder(path: Path) -> dict:
    """What the holder wrote into the lock file (it writes right after locking: retry a moment)."""
    for _ in range(20):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("pid"):
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another progeo process (PID unknown)"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    since = f", since {holder['since']}" if holder.get("since") else ""
    text = str(holder.get("command") or "")
    command = f": {text[:80]}{'...' if len(text) > 80 else ''}" if text else ""
    return f"another progeo process (PID {holder['pid']}{where}{since}{command})"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, flag: str = "--out", create: bool = True) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block; :class:`FolderInUseError` at once if another process holds it.

    ``flag`` is the option that named the folder (for the message). ``create``: make the folder
    when missing; otherwise a missing folder is not locked (the caller reports it).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is a file; give a folder (or a new name) for the output")
    created = not folder.is_dir()
    if created:
        if not create:
            yield folder
            return
        folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(folder, flag)
    if fd is None:
        yield folder
        return
    _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        del _held[key]
        _release(folder / LOCK_NAME, fd)
        if created:  # a command that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(folder: Path, flag: str) -> int | None:
    global _warned
    if fcntl is None:  # pragma: no cover - Windows
        if not _warned:
            log.warning("no fcntl on this platform: output folders are not locked against a second writer")
            _warned = True
        return None
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FolderInUseError(f"{flag} {folder} is in use by {_describe(_holder(path))}; wait for it to end "
                                   f"or choose another {flag} (two writers would mix or delete each other's files)")
        try:  # the file may have been removed by a holder that released it meanwhile: lock the current one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    argv = ["progeo", *sys.argv[1:]] if sys.argv and "progeo" in sys.argv[0] else sys.argv
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(argv)}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
    return fd


def _release(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        path.unlink()  # before unlocking, so that no one locks a file that is about to disappear
    os.close(fd)  # closing releases the flock


__all__ = ["LOCK_NAME", "folder_lock"]
