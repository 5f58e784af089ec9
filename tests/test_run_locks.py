"""One writer per output folder (progeo.locks): a second process is refused at once naming the folder and
the holder's PID, a killed holder's lock is released, nothing of an old run is deleted without --overwrite
(and with it only once the new run has started), and evaluations into one --out add up."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import progeo
from progeo.errors import FolderInUseError
from progeo.locks import LOCK_NAME, folder_lock

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_threads")

SRC = str(Path(progeo.__file__).resolve().parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
FAST = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--threads", "1"]
_HOLD = "import sys, time\nfrom progeo.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
        "    print('locked', flush=True)\n    time.sleep(600)\n"


@pytest.fixture
def holder():
    """Start a process that locks a folder and sleeps; all are killed at the end."""
    started = []

    def hold(folder) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, env=ENV)
        started.append(p)
        assert p.stdout.readline().strip() == b"locked"
        return p

    yield hold
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()


def _refused(capsys, args, folder, pid) -> None:
    """The command exits with 2 at once, with one line naming the folder and the holder's PID."""
    from progeo.cli import main

    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{folder} is in use by another progeo process (PID {pid}" in err and err.count("\n") == 1, err
    assert time.perf_counter() - t0 < 30


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file() and p.name != LOCK_NAME}


def _stage1_args(tiny_world, tmp_path, out, epochs=40) -> list[str]:
    return ["train", "stage1", "--train-set", str(tiny_world / "train"), "--backbone", "tiny-vit", "--out-dir",
            str(out), "--groups-num", "2", "--epochs", str(epochs), "--batch-size", "16", "--device", "cpu",
            "--no-progress", "--no-tensorboard", "--feature-cache-dir", str(tmp_path / "features"),
            "--groups-cache-dir", str(tmp_path / "groups"), "--threads", "1"]


def _cli(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "progeo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ENV, text=True)


def _wait_for(condition, proc, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the first run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _epochs(run: Path) -> list[str]:
    with open(run / "epochs.csv", newline="") as f:
        return [r["epoch"] for r in csv.DictReader(f)]


@pytest.mark.slow
def test_a_second_training_process_on_a_running_run_folder_is_refused(tiny_world, tmp_path):
    """A real race: a second `progeo train stage1` into the folder of a running one, started before the first's
    first checkpoint and again mid-run (the first paused with SIGSTOP meanwhile, so it is surely running),
    exits 2 naming the folder and the first's PID; the first's files are untouched and it finishes with one
    row per epoch."""
    run = tmp_path / "run"
    args = _stage1_args(tiny_world, tmp_path, run)
    first = _cli(args)

    def second_is_refused() -> None:
        first.send_signal(signal.SIGSTOP)
        try:
            before = _snapshot(run)
            second = subprocess.run([sys.executable, "-m", "progeo", *args], capture_output=True, text=True, env=ENV,
                                    timeout=120)
            assert second.returncode == 2, second.stderr
            assert re.search(rf"error: --out-dir {re.escape(str(run))} is in use by another progeo process "
                             rf"\(PID {first.pid}[,)].*progeo train stage1", second.stderr), second.stderr
            assert _snapshot(run) == before  # nothing of the running run was touched
        finally:
            first.send_signal(signal.SIGCONT)

    try:
        _wait_for(lambda: (run / "checkpoints").is_dir(), first, "it made its run folder")
        second_is_refused()  # before its first checkpoint (features being computed)
        _wait_for(lambda: (run / "epochs.csv").is_file() and len(_epochs(run)) >= 2, first, "its second epoch")
        second_is_refused()  # mid-run
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert _epochs(run) == [str(e) for e in range(40)]  # every row once
    assert json.loads((run / "metrics.json").read_text())["finished"] is True
    assert not (run / LOCK_NAME).exists()  # removed by the clean exit


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_released(tiny_world, tmp_path, capsys):
    """SIGKILL mid-run: the lock file stays behind, but it is no lock; --resume continues the run."""
    from progeo.cli import main

    run = tmp_path / "run"
    first = _cli(_stage1_args(tiny_world, tmp_path, run, epochs=30))
    try:
        _wait_for(lambda: (run / "checkpoints" / "state.safetensors").is_file(), first, "its first checkpoint")
    finally:
        first.kill()
        first.communicate()
    assert (run / LOCK_NAME).is_file() and json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid
    assert main(["train", "stage1", "--resume", str(run)]) == 0
    assert _epochs(run) == [str(e) for e in range(30)]


def test_lock_unit_behaviour(tmp_path, holder):
    folder = tmp_path / "out"
    with folder_lock(folder) as f, folder_lock(folder):  # re-entrant within a process
        assert f == folder and json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not folder.exists()  # made for the lock, left empty: removed
    p = holder(folder)
    with pytest.raises(FolderInUseError, match=rf"--out {re.escape(str(folder))} is in use .*PID {p.pid}"):
        with folder_lock(folder):
            pass
    p.send_signal(signal.SIGKILL)
    p.wait()
    with folder_lock(folder):  # the kernel released the killed holder's lock
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_every_training_stage_is_refused_on_a_locked_folder(tiny_world, tmp_path, holder, capsys):
    run = tmp_path / "run"
    pid = holder(run).pid
    _refused(capsys, _stage1_args(tiny_world, tmp_path, run), run, pid)
    _refused(capsys, ["pretrain", "--world", str(tiny_world), "--backbone", "tiny-rn", "--out-dir", str(run),
                      "--device", "cpu"], run, pid)
    _refused(capsys, ["train", "stage2", "--train-set", str(tiny_world / "train"), "--val-set",
                      str(tiny_world / "val"), "--backbone", "tiny-vit", "--no-text-loss", "--out-dir", str(run),
                      "--device", "cpu"], run, pid)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing was written


def test_nothing_of_an_old_run_is_deleted_without_overwrite_and_only_once_the_new_one_started(
        tiny_world, tmp_path, holder, capsys):
    from progeo.cli import main

    run = tmp_path / "run"
    assert main(_stage1_args(tiny_world, tmp_path, run, epochs=4)) == 0
    old = _snapshot(run)
    # a folder with only the logs of a run (no checkpoint, no metrics) is not wiped without --overwrite
    logs_only = tmp_path / "logs_only"
    logs_only.mkdir()
    for name in ("config.json", "epochs.csv"):
        (logs_only / name).write_bytes((run / name).read_bytes())
    capsys.readouterr()
    assert main(_stage1_args(tiny_world, tmp_path, logs_only, epochs=2)) == 2
    assert "already holds a stage-1 run (config.json, epochs.csv)" in capsys.readouterr().err
    assert len(_epochs(logs_only)) == 4
    # the empty TensorBoard file of a run that failed before it started is no run: replaced without --overwrite
    failed = tmp_path / "failed_start" / "tensorboard" / "events.out.tfevents.1.host.1.0"
    failed.parent.mkdir(parents=True)
    failed.write_bytes(b"")
    assert main(_stage1_args(tiny_world, tmp_path, failed.parents[1], epochs=2)) == 0
    assert not failed.exists() and _epochs(failed.parents[1]) == ["0", "1"]
    # --overwrite while another process holds the folder: refused, the old run intact
    p = holder(run)
    _refused(capsys, _stage1_args(tiny_world, tmp_path, run, epochs=2) + ["--overwrite"], run, p.pid)
    assert _snapshot(run) == old
    p.kill()
    p.wait()
    # --overwrite of a run that fails before it starts (its training folder is missing): the old run intact
    bad = _stage1_args(tiny_world, tmp_path, run, epochs=2) + ["--overwrite"]
    bad[bad.index("--train-set") + 1] = str(tmp_path / "no_such_train_set")
    assert main(bad) == 2
    assert _snapshot(run) == old
    # --overwrite that starts: the old run replaced
    assert main(_stage1_args(tiny_world, tmp_path, run, epochs=2) + ["--overwrite"]) == 0
    assert _epochs(run) == ["0", "1"]


# -- eval and index folders ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from progeo.models import build_model, save_model

    torch.manual_seed(0)
    return str(save_model(build_model("tiny-vit"), tmp_path_factory.mktemp("model") / "tiny"))


def test_evaluations_of_different_query_folders_into_one_out_add_up(tiny_world, model_dir, tmp_path, capsys):
    from progeo.cli import main

    out = tmp_path / "out"
    base = ["eval", "--model", model_dir, "--test-set", str(tiny_world / "test"), "--out", str(out), *FAST]
    assert main([*base, "--queries", "queries", "--plot"]) == 0
    assert main([*base, "--queries", "queries_night", "--plot"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    names = [r["name"] for r in results]
    assert names == ["tiny_world/test/queries", "tiny_world/test/queries_night"]
    assert all(r["run"]["model"] == model_dir for r in results)
    again = main([*base, "--queries", "queries_night", "--recall-values", "1", "5"])  # the same folder: replaced
    assert again == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["name"] for r in results] == names and set(results[1]["recalls"]) == {"R@1", "R@5"}


def test_eval_and_index_build_are_refused_on_a_locked_folder(tiny_world, model_dir, tmp_path, holder, capsys):
    from progeo.cli import main

    locked = tmp_path / "locked"
    pid = holder(locked).pid
    _refused(capsys, ["eval", "--model", model_dir, "--test-set", str(tiny_world / "test"), "--out", str(locked),
                      *FAST], locked, pid)
    _refused(capsys, ["eval", "--model", model_dir, "--test-set", str(tiny_world / "test"), "--out",
                      str(tmp_path / "free"), "--save-descriptors", str(locked), *FAST], locked, pid)
    build = ["index", "build", "--model", model_dir, "--database", str(tiny_world / "test" / "database"), *FAST]
    _refused(capsys, [*build, "--out", str(locked)], locked, pid)
    # an index already in the folder is replaced only with --overwrite
    index = tmp_path / "index"
    assert main([*build, "--out", str(index)]) == 0
    before = _snapshot(index)
    capsys.readouterr()
    assert main([*build, "--out", str(index)]) == 2
    assert "already holds an index" in capsys.readouterr().err and _snapshot(index) == before
    assert main([*build, "--out", str(index), "--overwrite"]) == 0
