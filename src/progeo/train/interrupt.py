"""Stopping a training run on SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's time limit) without losing it.

Every training stage runs inside a :class:`StopSignals` block. While its training loop runs
(:attr:`StopSignals.deferring` set) the first SIGINT or SIGTERM only sets a flag; the loop reads it
after every step, saves its training state exactly there and raises :class:`Interrupted`, which says
what was saved and gives the command that continues the run (``progeo train stage1 --resume RUN``).
A second signal, or one that arrives outside the loop (loading data, extracting features, the
final evaluation), stops at once; the run then continues from its last saved state, and the
message says so. The CLI prints the message and exits with 128 + the signal number (130, 143).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_command(kind: str, run_dir: str | os.PathLike) -> str:
    """The shell command that continues run ``run_dir`` of stage ``kind`` (``pretrain``, ``stage1``, ``stage2``)."""
    from progeo.train.resume import KINDS

    return f"{KINDS[kind][1]} --resume {shlex.quote(os.path.abspath(run_dir))}"


class Interrupted(KeyboardInterrupt):
    """A training run stopped by a signal; ``str()`` says what was saved and how to continue."""

    def __init__(self, signum: int, detail: str, command: str | None = None):
        self.signum, self.detail, self.command = int(signum), detail, command
        super().__init__(str(self))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        text = f"interrupted by {signal.Signals(self.signum).name}; {self.detail}"
        return text + (f". Continue the run with:\n  {self.command}" if self.command else "")


class StopSignals:
    """SIGINT/SIGTERM handling of one training run (a context manager; see the module docstring).

    The stage sets ``run_dir`` once its folder is known and ``resumable`` once ``--resume RUN``
    would continue it (its ``config.json`` written, or the run itself a resumed one).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.run_dir: Path | None = None
        self.resumable = False
        self.signum: int | None = None
        self.deferring = False  # set while the training loop runs: the first signal only sets ``signum``
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """A signal asked the training loop to save its state and stop after the current step."""
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None and self.deferring:
            self.signum = signum
            log.warning("%s received: stopping after this step with the training state saved (send it again to stop "
                        "at once)", signal.Signals(signum).name)
            return
        self.signum = self.signum or signum
        raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals can be handled only there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt) and not isinstance(exc, Interrupted):
            if self.resumable and self.run_dir is not None:
                detail = "stopped at once, outside the training steps (nothing new saved); --resume continues from " \
                         "the last saved training state"
                raise Interrupted(self.signum or signal.SIGINT, detail, resume_command(self.kind, self.run_dir)) from None
            where = f" (nothing was saved in {self.run_dir})" if self.run_dir is not None else ""
            raise Interrupted(self.signum or signal.SIGINT, f"stopped before training started{where}; run the same "
                              "command again to start it") from None

    def stop(self, where: str, state_path: str | os.PathLike) -> Interrupted:
        """The exception a loop raises after saving its state at ``where`` (e.g. "epoch 2, batch 5") to ``state_path``."""
        assert self.run_dir is not None
        signum = self.signum or signal.SIGTERM  # another process of a distributed run got the signal
        return Interrupted(signum, f"the training state at {where} is saved in {state_path}",
                           resume_command(self.kind, self.run_dir))


def ignore_stop_signals(worker_id: int = 0) -> None:
    """For data-loader worker processes: a Ctrl-C reaches the whole process group, and the main process,
    not the workers, decides when to stop (the workers end with it)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


__all__ = ["Interrupted", "StopSignals", "ignore_stop_signals", "resume_command"]
