"""The one resumable training run behind pretraining, stage 1 and stage 2 (:func:`run_training`).

A stage (:class:`TrainingStage`) supplies only its steps, its state and its outputs; the engine does
the rest: the run folder (locked for the whole run; a fresh run, ``overwrite`` or ``resume``:
:mod:`progeo.train.resume`; config and logs: :class:`RunDir`); the training state (the stage's
``state_dict`` + epoch, step, epoch losses, RNG states), written atomically after every epoch and
every ``checkpoint_every`` steps and continued exactly by a resumed run (a finished one is left
untouched); ``stop_after`` (stop as if killed); SIGINT/SIGTERM (state saved at the current step,
the command that continues printed: :mod:`progeo.train.interrupt`); a NaN/inf loss (stopped before
the update, the last good state kept); one progress bar; under torchrun only rank 0 writes and
every rank stops at the same step. A stage's learning rate is a pure function of (epoch, step)
(:func:`~progeo.train.loop.cosine_lr`), so a resumed run needs no scheduler state to get the same.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from progeo.device import resolve_device
from progeo.errors import CheckpointError, ConfigError
from progeo.train import ddp
from progeo.train.interrupt import StopSignals
from progeo.train.loop import check_finite, cpu_threads, seed_everything
from progeo.train.resume import load_training_state, prepare_out_dir, run_folder_lock, save_training_state
from progeo.train.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands; all but ``session_steps`` is saved in the training state."""

    epoch: int = 0  # the epoch being trained
    step: int = 0  # the next step of ``epoch``
    losses: list[float] = field(default_factory=list)  # mean loss of every finished epoch
    sums: dict[str, float] = field(default_factory=dict)  # sums of the step losses of ``epoch`` so far
    session_steps: int = 0  # steps run by this call

    def saved(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "losses": self.losses, "sums": self.sums}

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> "Progress":
        # states written before the engine: stage 2 counted "iteration"s, pretraining and stage 1 a loss "total"
        sums = saved.get("sums", {"loss": saved.get("total", 0.0)})
        return cls(int(saved["epoch"]), int(saved["step"] if "step" in saved else saved["iteration"]),
                   [float(v) for v in saved.get("losses", [])], {k: float(v) for k, v in sums.items()})


@dataclass
class RunContext:
    """What a stage is built from: the configuration, the run folder and where it runs."""

    cfg: Any
    run: RunDir
    device: torch.device
    info: ddp.DistInfo
    resuming: bool  # a training state will be loaded (load_state_dict) after the constructor
    started: float  # time.perf_counter() at the start of the call
    progress: Progress = field(default_factory=Progress)  # kept up to date by the engine


class TrainingStage:
    """One training stage: class attributes say what it is, the constructor loads data and model."""

    kind: str  # "pretrain", "stage1", "stage2" (progeo.train.resume.KINDS)
    name: str  # in messages: "stage 1"
    unit: str = "step"  # what one step is called in messages: "batch", "iteration"
    outputs: tuple[str, ...] = ()  # final files/folders in the run folder
    tables: tuple[str, ...] = ("epochs",)  # CSV logs; "epochs" has an "epoch" column
    distributed: bool = False  # torchrun may run it

    def __init__(self, ctx: RunContext):
        self.ctx, self.cfg, self.run, self.device, self.info = ctx, ctx.cfg, ctx.run, ctx.device, ctx.info

    @classmethod
    def finished(cls, folder: Path, metrics: dict) -> Any:
        """The result of a run that had already finished (from its ``metrics.json``)."""

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    def steps_in_epoch(self, epoch: int) -> int:
        """The number of steps of ``epoch``."""

    def begin_epoch(self, epoch: int, step: int) -> None:
        """Prepare ``epoch`` (learning rate, batch order), trained from ``step`` (> 0 after a resume)."""

    def train_step(self, epoch: int, step: int, finite: Callable[[torch.Tensor], float]) -> dict[str, float]:
        """One step; ``finite(loss)`` before the update returns the loss (averaged over processes) or stops the
        run on NaN. Returns the losses to average over the epoch, ``"loss"`` among them."""

    def end_epoch(self, epoch: int, means: dict[str, float]) -> None:
        """After the last step of ``epoch`` (``means``: its mean losses): log it, evaluate, save models."""

    def state_dict(self) -> dict[str, Any]:
        """What the training state stores of the stage (tensors, numbers, lists, dicts)."""

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (``ctx.progress`` already restored)."""

    def finish(self, stopped: bool) -> Any:
        """Write the outputs and metrics (unless ``stopped`` by stop_after) and return the result."""


def run_training(stage_cls: type[TrainingStage], cfg) -> Any:
    """Run (or, with ``cfg.resume``, continue) ``stage_cls`` with ``cfg`` (already checked) to the end."""
    if not stage_cls.distributed and ddp.launched_by_torchrun():
        raise ConfigError(f"{stage_cls.name} runs in one process; start it without torchrun (only stage 2 is "
                          "distributed)")
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    info, device = ddp.init_distributed(device) if stage_cls.distributed else (ddp.DistInfo(), device)
    try:
        with cpu_threads(cfg.threads), run_folder_lock(cfg, info, device), StopSignals(stage_cls.kind) as stop:
            return _run(stage_cls, cfg, info, device, stop, started)  # rank 0 locks the run folder
    finally:
        ddp.cleanup(info)


def _run(stage_cls, cfg, info: ddp.DistInfo, device: torch.device, stop: StopSignals, started: float) -> Any:
    start = prepare_out_dir(cfg, stage_cls.kind, outputs=stage_cls.outputs, tables=stage_cls.tables)
    if start.finished is not None:
        return stage_cls.finished(start.path, start.finished)
    ddp.barrier(info)  # every process has checked the folder before the main one writes to it
    stop.run_dir, stop.resumable = start.path, bool(cfg.resume)
    seed_everything(cfg.seed)
    run = RunDir(start.path, enabled=info.is_main, tensorboard=cfg.tensorboard, replaces=start.replaced)
    try:
        ctx = RunContext(cfg, run, device, info, start.state_path is not None, started)
        stage = stage_cls(ctx)
        if start.state_path is not None:
            saved = load_training_state(start.state_path, stage.kind)
            try:
                ctx.progress = Progress.from_saved(saved)
                stage.load_state_dict(saved)
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # tensors that do not fit the model
                raise CheckpointError(f"training state {start.state_path} does not fit this configuration ({exc}); "
                                      "resume with the run's own config.json (same backbone, data and groups), or "
                                      "start a new run with --out-dir") from exc
            run.drop_rows_after("epochs", "epoch", ctx.progress.epoch - 1)
            log.info("resuming %s at epoch %d, %s %d", run.path, ctx.progress.epoch, stage.unit, ctx.progress.step)
        run.save_config(cfg)
        stop.resumable = True
        stopped = _train(stage, ctx, stop)
        result = stage.finish(stopped)
        if not stopped:
            run.write_metrics({"finished": True})
        return result
    finally:
        run.close()


def _train(stage: TrainingStage, ctx: RunContext, stop: StopSignals) -> bool:
    """Train to the last epoch: False then, True when ``stop_after`` stopped the run."""
    cfg, run, p, info, device = ctx.cfg, ctx.run, ctx.progress, ctx.info, ctx.device

    def save() -> None:
        if info.is_main:
            save_training_state(run.state_path, stage.kind, **p.saved(), **stage.state_dict())

    def requested() -> bool:  # any process got a stop signal: all of them stop at the same step
        return ddp.all_reduce_mean(1.0 if stop.requested else 0.0, info, device) > 0

    def finite(loss: torch.Tensor) -> float:
        return check_finite(ddp.all_reduce_mean(float(loss.detach()), info, device),
                            where=f"{stage.name} epoch {p.epoch} {stage.unit} {p.step}",
                            checkpoint=str(run.state_path) if run.state_path.exists() else None)

    sizes = [stage.steps_in_epoch(e) for e in range(stage.epochs)]
    bar = tqdm(total=sum(sizes), initial=sum(sizes[: p.epoch]) + p.step, desc=stage.name, unit=stage.unit,
               disable=not (cfg.progress and info.is_main))
    stop.deferring = True  # from here a first signal stops after the current step, with the state saved
    try:
        while p.epoch < stage.epochs:
            epoch, n = p.epoch, sizes[p.epoch]
            stage.begin_epoch(epoch, p.step)
            while p.step < n:
                losses = stage.train_step(epoch, p.step, finite)
                for k, v in losses.items():
                    p.sums[k] = p.sums.get(k, 0.0) + v
                p.step += 1
                p.session_steps += 1
                bar.set_postfix(epoch=epoch, loss=f"{losses['loss']:.4f}", refresh=False)
                bar.update(1)
                if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0 and p.step < n:
                    save()
                if cfg.stop_after is not None and p.session_steps >= cfg.stop_after:
                    log.warning("stop_after=%d reached: stopping as if the run had been killed", cfg.stop_after)
                    return True
                if p.step < n and requested():
                    save()
                    raise stop.stop(f"epoch {epoch}, {stage.unit} {p.step}", run.state_path)
            means = {k: v / n for k, v in p.sums.items()}
            p.losses.append(means.get("loss", math.nan))
            stage.end_epoch(epoch, means)
            run.flush()
            p.epoch, p.step, p.sums = epoch + 1, 0, {}
            save()  # after the epoch's log rows: a run killed in between redoes the epoch and its rows
            if requested():
                raise stop.stop(f"the end of epoch {epoch}", run.state_path)
        return False
    finally:
        stop.deferring = False
        bar.close()


__all__ = ["Progress", "RunContext", "TrainingStage", "run_training"]
