"""SIGTERM / SIGINT to a training run: the state is saved and the message gives the command that continues it.

Real `python -m progeo` subprocesses on the tiny synthetic world, signalled once their training loop
has written a checkpoint; the printed command is then run as printed and must resume the run.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import progeo
from progeo.train.interrupt import Interrupted, StopSignals

SRC = str(Path(progeo.__file__).resolve().parents[1])
COMMAND = re.compile(r"Continue the run with:\n  (progeo .+)\n")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "progeo", *args], stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), env=env, cwd=log.parent)


def _signal_when_saving(proc: subprocess.Popen, state: Path, sig: int, timeout: float = 240.0) -> None:
    """Send ``sig`` once the training loop has (re)written ``state`` after this call (it is in its steps)."""
    before = state.stat().st_mtime_ns if state.exists() else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be signalled"
        if state.exists() and state.stat().st_mtime_ns != before:
            proc.send_signal(sig)
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no training state written to {state} within {timeout} s")


def _stopped(proc: subprocess.Popen, log: Path, sig: int) -> tuple[str, str]:
    """(stderr, printed resume command) of a run stopped by ``sig``, checked: exit 128 + sig, state saved."""
    assert proc.wait(timeout=120) == 128 + sig
    err = log.read_text()
    name = signal.Signals(sig).name
    assert f"interrupted by {name}; the training state at " in err and " is saved in " in err, err[-2000:]
    match = COMMAND.search(err)
    assert match, err[-2000:]
    return err, match.group(1)


def _run_printed(command: str, log: Path) -> subprocess.Popen:
    words = shlex.split(command)
    assert words[0] == "progeo"
    return _start(words[1:], log)


def _resume_and_stop_again(command: str, run: Path, tmp_path: Path, where: str, sig: int) -> None:
    """The printed command, run as printed, resumes at ``where``; a second signal stops it again, saved."""
    log = tmp_path / "resumed.log"
    proc = _run_printed(command, log)
    _signal_when_saving(proc, run / "checkpoints" / "state.safetensors", sig)
    err, again = _stopped(proc, log, sig)
    assert f"resuming {run} at {where}" in err, err[-2000:]
    assert again == command


def _where(err: str, unit: str) -> tuple[int, int]:
    """(epoch, step) the saved state continues from, as the message says."""
    m = re.search(rf"the training state at epoch (\d+), {unit} (\d+) is saved", err)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"the training state at the end of epoch (\d+) is saved", err)  # signalled in its last step
    assert m, err[-2000:]
    return int(m.group(1)) + 1, 0


@pytest.mark.slow
def test_stage1_sigterm_then_sigint_print_a_command_that_resumes(tiny_world, tmp_path):
    run = tmp_path / "stage 1 run"  # a space: the printed command must quote it
    log = tmp_path / "first.log"
    proc = _start(["train", "stage1", "--train-set", str(tiny_world / "train"), "--backbone", "tiny-vit",
                   "--out-dir", str(run), "--epochs", "100000", "--batch-size", "16", "--groups-num", "2",
                   "--checkpoint-every", "1", "--device", "cpu", "--threads", "1", "--no-progress",
                   "--no-tensorboard", "--feature-cache-dir", str(tmp_path / "features"),
                   "--groups-cache-dir", str(tmp_path / "groups")], log)
    _signal_when_saving(proc, run / "checkpoints" / "state.safetensors", signal.SIGTERM)
    err, command = _stopped(proc, log, signal.SIGTERM)
    assert command == f"progeo train stage1 --resume {shlex.quote(str(run.resolve()))}"
    epoch, batch = _where(err, "batch")
    _resume_and_stop_again(command, run, tmp_path, f"epoch {epoch}, batch {batch}", signal.SIGINT)


@pytest.mark.slow
def test_stage2_sigint_prints_a_command_that_resumes(tiny_world, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = _start(["train", "stage2", "--train-set", str(tiny_world / "train"), "--val-set", str(tiny_world / "val"),
                   "--backbone", "tiny-vit", "--no-text-loss", "--out-dir", str(run), "--image-size", "64",
                   "--groups-num", "1", "--epochs", "2", "--iterations-per-epoch", "100000", "--batch-size", "8",
                   "--freeze-trans", "2", "--checkpoint-every", "1", "--device", "cpu", "--threads", "1",
                   "--no-progress", "--no-tensorboard", "--groups-cache-dir", str(tmp_path / "groups")], log)
    _signal_when_saving(proc, run / "checkpoints" / "state.safetensors", signal.SIGINT)
    err, command = _stopped(proc, log, signal.SIGINT)
    assert command == f"progeo train stage2 --resume {shlex.quote(str(run.resolve()))}"
    epoch, iteration = _where(err, "iteration")
    _resume_and_stop_again(command, run, tmp_path, f"epoch {epoch}, iteration {iteration}", signal.SIGTERM)


@pytest.mark.slow
def test_pretraining_sigterm_prints_the_resume_command(tiny_world, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    proc = _start(["pretrain", "--world", str(tiny_world), "--backbone", "tiny-rn", "--out-dir", str(run),
                   "--epochs", "100000", "--batch-size", "32", "--max-images", "256", "--checkpoint-every", "1",
                   "--device", "cpu", "--threads", "1", "--no-progress", "--no-tensorboard"], log)
    _signal_when_saving(proc, run / "checkpoints" / "state.safetensors", signal.SIGTERM)
    err, command = _stopped(proc, log, signal.SIGTERM)
    assert command == f"progeo pretrain --resume {shlex.quote(str(run.resolve()))}"
    epoch, step = _where(err, "step")
    from progeo.train.run_dir import load_state

    saved = load_state(run / "checkpoints" / "state.safetensors")
    assert (saved["epoch"], saved["step"]) == (epoch, step)


def test_a_signal_outside_the_training_steps_stops_at_once_and_says_what_continues(tmp_path):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with StopSignals("stage1") as stop:
            stop.run_dir = tmp_path / "run"
            os.kill(os.getpid(), signal.SIGTERM)  # before config.json: nothing to resume
            time.sleep(5)
    assert info.value.exit_code == 143 and info.value.command is None
    assert "stopped before training started" in str(info.value) and "run the same command again" in str(info.value)
    with pytest.raises(Interrupted) as info:
        with StopSignals("stage2") as stop:
            stop.run_dir, stop.resumable = tmp_path / "run", True
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert info.value.exit_code == 130
    assert info.value.command == f"progeo train stage2 --resume {tmp_path / 'run'}"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
