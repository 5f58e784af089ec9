"""The run folder: config, CSV + TensorBoard logs, metrics JSON and resumable training states.

Layout of ``RUN/``::

    config.json            the full configuration of the run (re-loadable with --config)
    <table>.csv            one CSV per log table (``epochs.csv``, ``iterations.csv``...)
    tensorboard/           TensorBoard event files (same scalars as the CSVs)
    metrics.json           final / best numbers of the run
    checkpoints/           training states (``state.safetensors``) and saved models

Only the main process writes (``enabled=False`` on the other ranks makes every method a no-op).

A *training state* is any nested structure of dicts, lists, numbers, strings and tensors (model
and optimizer state dicts, RNG states, counters): :func:`save_state` stores its tensors in one
safetensors file and the structure as JSON in the file's metadata, atomically; no pickle.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from progeo.errors import CheckpointError, is_read_error, reading, short_reason
from progeo.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)
LOG_FIX = "restore it from a copy, or delete it (the run then logs to a new one)"

STATE_FORMAT = "progeo-training-state"
_TENSOR = "__tensor__"
_DICT = "__dict__"


class RunDir:
    """A training run's output folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
                 replaces: tuple[Path, ...] = ()):
        self.path = Path(path)
        self.enabled = enabled
        self._replaces = tuple(replaces)  # an old run's files, deleted by the first save_config
        self._writer = None
        self._headers: dict[str, list[str]] = {}
        if not enabled:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.path / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; logging to CSV only (pip install tensorboard)")

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def state_path(self) -> Path:
        return self.checkpoints / "state.safetensors"

    def save_config(self, cfg) -> None:
        """Write ``config.json``; the one-off actions (resume, overwrite, stop_after) are stored unset, so
        ``--resume RUN`` or ``--config RUN/config.json`` does not repeat them.

        A stage calls it once its data and model are loaded, right before training: the run has
        started cleanly, so the files of the old run it replaces (``replaces``) are deleted first."""
        if self.enabled:
            import dataclasses
            import shutil

            for old in self._replaces:
                log.info("deleting %s of the old run", old)
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink(missing_ok=True)
            self._replaces = ()

            from progeo.config_files import save_config

            once = {k: v for k, v in (("resume", None), ("overwrite", False), ("stop_after", None)) if hasattr(cfg, k)}
            save_config(dataclasses.replace(cfg, **once), self.path / "config.json")

    def log(self, table: str, row: dict[str, Any], step: int | None = None) -> None:
        """Append ``row`` to ``<table>.csv`` and its numbers to TensorBoard (at ``step``)."""
        if not self.enabled:
            return
        path = self.path / f"{table}.csv"
        header = self._headers.get(table)
        if header is None and path.exists():
            with reading(path, "training log", LOG_FIX, CheckpointError), open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        if header is None or any(k not in header for k in row):
            header = list(header or []) + [k for k in row if k not in (header or [])]
            self._rewrite_header(path, header)
        self._headers[table] = header
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_cell(row.get(k, "")) for k in header])
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._writer.add_scalar(f"{table}/{key}", value, global_step=step)

    @staticmethod
    def _rewrite_header(path: Path, header: list[str]) -> None:
        rows = []
        if path.exists():
            with reading(path, "training log", LOG_FIX, CheckpointError), open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for r in rows:
                writer.writerow([r.get(k, "") for k in header])

    def drop_rows_after(self, table: str, column: str, last: float) -> None:
        """Remove the rows of ``<table>.csv`` whose ``column`` exceeds ``last`` (a resumed run redoes them)."""
        path = self.path / f"{table}.csv"
        if not self.enabled or not path.exists():
            return
        with reading(path, "training log", LOG_FIX, CheckpointError), open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
            kept = [r for r in rows if not r.get(column) or float(r[column]) <= last]
        if len(kept) == len(rows):
            return
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into ``metrics.json`` (atomically)."""
        if not self.enabled:
            return
        path = self.path / "metrics.json"
        try:
            current = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            current.update(metrics)
        except Exception as exc:
            if not is_read_error(exc):
                raise
            log.warning("%s is unreadable (%s); writing a new one with the current metrics", path, short_reason(exc))
            current = dict(metrics)
        write_json_atomic(path, current)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


# -- training states ---------------------------------------------------------------------------


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").clone().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        return {_DICT: [[k, _flatten(v, f"{prefix}.{i}", tensors)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state (at {prefix})")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if isinstance(obj, dict) and _DICT in obj:
        return {k: _unflatten(v, tensors) for k, v in obj[_DICT]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a nested training state to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "s", tensors)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "tree": json.dumps(tree)})
    return path


def load_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read back what :func:`save_state` wrote (tensors on ``device``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}; give the folder of a run that saved a checkpoint")
    fix = "the run cannot continue from it: restore it from a copy, or start the run again with --overwrite"
    with reading(path, "training state", fix, CheckpointError):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a progeo training state (format {meta.get('format')!r})")
    with reading(path, "training state", fix, CheckpointError):
        return _unflatten(json.loads(meta["tree"]), tensors)
