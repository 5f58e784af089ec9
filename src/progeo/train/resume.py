"""Starting, resuming and protecting run folders; shared by pretraining and both ProGEO stages.

A run folder (:class:`~progeo.train.run_dir.RunDir`) is recognised by its ``config.json``: the
stage that wrote it is the config class whose fields its keys are (:func:`run_kind`).

- The run folder is locked (:func:`run_folder_lock`, :mod:`progeo.locks`) for the whole run: a
  second process writing to it is refused at once, naming the folder and the holder's PID.
- A fresh run (no ``resume``) refuses an ``out_dir`` that already holds anything of a run
  (``config.json``, a CSV log, TensorBoard events, a training state, ``metrics.json`` or one of
  the stage's outputs) unless ``overwrite`` is set, so nothing of an old run is lost by accident.
  With ``overwrite`` the old run's files are deleted only once the new run has started cleanly:
  folder locked, config validated, data and model loaded (:meth:`RunDir.save_config
  <progeo.train.run_dir.RunDir.save_config>`, right before the first step); a new run that fails
  before that leaves the old one as it was.
- ``resume=RUN`` checks that RUN is a run of the same stage whose configuration agrees in every
  field that decides what is trained (all but :data:`FREE_FIELDS`), then continues from its
  training state; a run stopped before its first checkpoint starts again from the beginning, and
  a finished run (``metrics.json`` says ``finished`` and the outputs exist) is left untouched.

Training states are written with :func:`save_training_state` (the stage's fields plus the
global RNG states and the stage's name) through :func:`~progeo.train.run_dir.save_state`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from progeo.errors import CheckpointError, ConfigError, reading

log = logging.getLogger(__name__)

KINDS = {"pretrain": ("pretraining", "progeo pretrain"), "stage1": ("stage-1", "progeo train stage1"),
         "stage2": ("stage-2", "progeo train stage2")}

# Fields a resumed run may change: where and how it runs, logging, caches, the checkpoint options, and
# what recovers from a NaN stop (learning rates, mixed precision). Every other field must match the run's.
FREE_FIELDS = frozenset({
    "out_dir", "device", "amp", "num_workers", "progress", "tensorboard", "threads", "checkpoint_every", "resume",
    "overwrite", "stop_after", "lr", "classifiers_lr", "groups_cache_dir", "feature_cache_dir", "feature_batch_size",
    "eval_batch_size", "preload_images", "preload_max_gib", "test_set", "test_queries"})
PATH_FIELDS = frozenset({"world", "train_set", "val_set", "weights", "prompts"})
STATE_FILE = Path("checkpoints") / "state.safetensors"


def _config_classes() -> dict[str, type]:
    from progeo.config import PretrainConfig, Stage1Config, Stage2Config

    return {"pretrain": PretrainConfig, "stage1": Stage1Config, "stage2": Stage2Config}


def _describe(kind: str | None) -> str:
    return f"a {KINDS[kind][0]} run" if kind in KINDS else "a run of another kind"


def run_kind(config: dict) -> str | None:
    """The stage (``pretrain``, ``stage1``, ``stage2``) whose config has the keys of ``config``."""
    from progeo.config_files import flatten_config

    best, overlap = None, 0
    for kind, cls in _config_classes().items():
        try:
            n = len(flatten_config(cls, config))  # flat (before nested sections) or nested
        except ConfigError:
            continue
        if n > overlap:
            best, overlap = kind, n
    return best


def read_run_config(folder: str | os.PathLike, kind: str) -> dict:
    """The ``config.json`` of run folder ``folder``; :class:`CheckpointError` unless it is a ``kind`` run."""
    folder = Path(folder)
    what, command = KINDS[kind]
    fix = f"give the folder of a {what} run (the --out-dir it wrote to)"
    if not folder.is_dir():
        raise CheckpointError(f"--resume {folder}: the folder does not exist, so there is no training state to "
                              f"continue; {fix}")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"--resume {folder}: no config.json there, so it is not a run folder (no training "
                              f"state to continue); {fix}")
    with reading(path, "run config", "restore it from a copy, or start a new run with another --out-dir",
                 CheckpointError):
        config = json.loads(path.read_text(encoding="utf-8"))
    found = run_kind(config) if isinstance(config, dict) else None
    if found != kind:
        other = f"; resume it with `{KINDS[found][1]} --resume {folder}`" if found else ""
        raise CheckpointError(f"--resume {folder}: it holds {_describe(found)}, not {_describe(kind)}{other}, "
                              f"or {fix}")
    return config


def _same(name: str, a: Any, b: Any) -> bool:
    if a == b:
        return True
    if name in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and a and b:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def check_same_run(cfg, saved: dict, folder: str | os.PathLike, kind: str) -> None:
    """:class:`ConfigError` when ``cfg`` differs from the run's ``saved`` config in a field that matters."""
    from progeo.config_files import flat_config, flatten_config

    now = json.loads(json.dumps(flat_config(cfg)))
    saved = flatten_config(type(cfg), saved, f"{Path(folder) / 'config.json'}")
    diff = [(k, saved[k], now[k]) for k in saved
            if k in now and k not in FREE_FIELDS and not _same(k, saved[k], now[k])]
    if not diff:
        return
    listed = ", ".join(f"{k}={old!r} (now {new!r})" for k, old, new in diff[:4]) + (" ..." if len(diff) > 4 else "")
    flags = " ".join("--" + k.replace("_", "-") for k, _, _ in diff[:4])
    raise ConfigError(f"--resume {folder}: the run was made with {listed}; a resumed run keeps the values of "
                      f"{Path(folder) / 'config.json'} (drop {flags}), or start a new run with another --out-dir")


def _read_metrics(folder: Path) -> dict:
    try:
        data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class RunStart:
    """Where a run writes and what it continues from (see :func:`prepare_out_dir`)."""

    path: Path
    state_path: Path | None = None  # the training state to continue from (None: start at the beginning)
    finished: dict | None = None  # metrics.json of an already finished run: nothing is left to do
    replaced: tuple[Path, ...] = ()  # files of an old run, deleted when the new run starts (RunDir.save_config)


@contextlib.contextmanager
def run_folder_lock(cfg, info=None, device=None):
    """Hold the lock of the run folder (``cfg.resume`` or ``cfg.out_dir``) for the block.

    Under torchrun (``info`` of :func:`progeo.train.ddp.init_distributed`) only rank 0 locks; it
    tells the other ranks whether it could, so that all of them stop when the folder is in use.
    """
    from progeo.errors import FolderInUseError
    from progeo.locks import folder_lock

    folder, flag = (cfg.resume, "--resume") if cfg.resume else (cfg.out_dir, "--out-dir")
    is_main = info is None or info.is_main
    with contextlib.ExitStack() as stack:
        refused: FolderInUseError | None = None
        if is_main:
            try:
                stack.enter_context(folder_lock(folder, flag=flag, create=not cfg.resume))
            except FolderInUseError as exc:
                refused = exc
        if info is not None and info.distributed:
            from progeo.train import ddp

            if ddp.broadcast_float(0.0 if refused else 1.0, info, device) == 0.0 and refused is None:
                raise FolderInUseError(f"{flag} {folder} is in use by another progeo process (rank 0 says why)")
        if refused is not None:
            raise refused
        yield


def prepare_out_dir(cfg, kind: str, *, outputs: tuple[str, ...] = (), tables: tuple[str, ...] = ()) -> RunStart:
    """Check ``cfg.out_dir`` (fresh run) or ``cfg.resume`` (see the module docstring) before a run writes.

    ``outputs``: the stage's final files/folders inside the run folder; ``tables``: its CSV logs.
    Nothing is deleted here: the files the new run replaces are listed in :attr:`RunStart.replaced`
    for its :class:`~progeo.train.run_dir.RunDir` to delete when the run starts (on the main process).
    Call it while holding :func:`run_folder_lock`.
    """
    if cfg.resume:
        folder = Path(cfg.resume)
        check_same_run(cfg, read_run_config(folder, kind), folder, kind)
        metrics, has_state = _read_metrics(folder), (folder / STATE_FILE).is_file()
        # finished: said so by metrics.json, or outputs and metrics without a state (made before states existed)
        if outputs and all((folder / o).exists() for o in outputs) and (
                metrics.get("finished") or (metrics and not has_state)):
            log.info("%s is %s that already finished; nothing to do", folder, _describe(kind))
            return RunStart(folder, finished=metrics)
        if has_state:
            return RunStart(folder, folder / STATE_FILE)
        log.warning("%s stopped before its first checkpoint: starting it again from the beginning", folder)
        return RunStart(folder, replaced=_old_run_files(folder, (), tables))
    folder = Path(cfg.out_dir)
    old = _old_run_files(folder, outputs, tables)
    # TensorBoard events alone are the empty file of a run that failed before it started (no config.json)
    if any(p.parent.name != "tensorboard" for p in old) and not cfg.overwrite:
        try:
            found = run_kind(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError):
            found = None
        what = _describe(found) if found else "a run"
        held = [str(p.relative_to(folder)) for p in old]
        listed = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise ConfigError(f"--out-dir {folder} already holds {what} ({listed}); continue it with "
                          f"--resume {folder}, replace it with --overwrite, or choose another --out-dir")
    if cfg.overwrite and old:
        log.info("--overwrite: the old run's files in %s are deleted once this run has started", folder)
    return RunStart(folder, replaced=old)


def _old_run_files(folder: Path, outputs: tuple[str, ...], tables: tuple[str, ...]) -> tuple[Path, ...]:
    """The files (and output folders) of a run in ``folder``: outputs, state, metrics, config, logs, events."""
    paths = [folder / STATE_FILE, folder / "metrics.json", *(folder / o for o in outputs), folder / "config.json",
             *(folder / f"{t}.csv" for t in tables)]
    found = [p for p in paths if p.exists()]
    return tuple(found + sorted((folder / "tensorboard").glob("events.out.tfevents.*")))


def save_training_state(path: str | os.PathLike, kind: str, **fields: Any) -> Path:
    """Atomically write a training state: ``fields`` (nested dicts/lists/tensors) + global RNG states + ``kind``."""
    from progeo.train.loop import rng_state
    from progeo.train.run_dir import save_state

    rng_meta, rng_tensors = rng_state()
    return save_state(path, {"format_version": 1, "kind": kind, **fields, "rng": rng_meta, "rng_tensors": rng_tensors})


def load_training_state(path: str | os.PathLike, kind: str) -> dict:
    """Read a state written by :func:`save_training_state` for ``kind`` and restore the global RNG states."""
    from progeo.train.loop import set_rng_state
    from progeo.train.run_dir import load_state

    saved = load_state(path)
    if saved.get("kind", "stage2") != kind:  # stage 2 wrote no kind before the run engine
        raise CheckpointError(f"{path} is the training state of {_describe(saved.get('kind'))}, not of "
                              f"{_describe(kind)}; resume the folder with the command that made it")
    set_rng_state(saved.get("rng", {}), saved.get("rng_tensors", {}))
    return saved


__all__ = ["FREE_FIELDS", "RunStart", "check_same_run", "load_training_state", "prepare_out_dir",
           "read_run_config", "run_folder_lock", "run_kind", "save_training_state"]

