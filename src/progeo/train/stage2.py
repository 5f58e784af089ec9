"""ProGEO stage 2 (SPEC 1.5): train the image encoder with CosFace and the stage-1 prompts.

Per group, a CosFace classifier with its own Adam; epoch ``e`` trains group ``e mod groups_num``
and only that group's classifier (and its optimizer state) lives on the device. The loss is
``CE(CosFace(desc), y) + w_text * LS-CE(desc @ T_g^T, y) [+ w_tri * soft triplet]`` where ``T_g``
are the text features of all classes of group g, computed once from the frozen prompts.
``text_loss=False`` is plain CosPlace on the same backbone (no prompts needed). The groups are
progeo's first ``groups_num``, or, for prompts imported from the authors (which name their
groups, numbered otherwise), the first ``groups_num`` the prompts file names.

After every epoch: recall on the val set; the best (R@1) and the last model are saved in the
models' format (``RUN/best_model``, ``RUN/last_model``; ``progeo.load_model`` reads them) and the
resumable training state (``RUN/checkpoints/state.safetensors``: model, optimizers, all
classifiers, RNG, epoch, iteration, best recall), also every ``checkpoint_every`` iterations.
At the end, the best model's test recalls. Under ``torchrun`` the image encoder runs in
DistributedDataParallel, classifier gradients are averaged by hand, each process trains on
its slice of every global batch, and only rank 0 writes. SIGINT/SIGTERM save the state after the
current iteration (all processes stop at the same one) and stop with the command that continues
the run (:mod:`progeo.train.interrupt`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from progeo.config import Stage2Config
from progeo.device import autocast, resolve_device
from progeo.losses import label_smoothed_cross_entropy, soft_triplet_loss
from progeo.train import ddp
from progeo.train.class_batches import EpochBatches, epoch_loader
from progeo.train.interrupt import StopSignals
from progeo.train.loop import (check_finite, make_grad_scaler, optimizer_to, seed_everything, torch_generator)
from progeo.train.resume import prepare_out_dir, run_folder_lock
from progeo.train.run_dir import RunDir, load_state, save_state
from progeo.train.stage2_setup import Stage2Parts, build_parts, evaluate_model

log = logging.getLogger(__name__)

BEST_NAME, LAST_NAME = "best_model", "last_model"


@dataclass
class Stage2Result:
    run_dir: Path
    best_model: Path | None
    last_model: Path | None
    best_val_r1: float
    best_epoch: int
    val_history: list[dict] = field(default_factory=list)
    test_recalls: dict[str, dict] = field(default_factory=dict)
    epochs_done: int = 0
    iterations_done: int = 0  # in this process call
    stopped: bool = False  # stop_after ended the run early (as if it had been killed)
    seconds: float = 0.0
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (last weights)
    classifiers: list = field(default_factory=list, repr=False)  # per-group CosFace classifiers (CPU)


class _Stop(Exception):
    """Raised by the stop_after debug hook."""


def run_stage2(cfg: Stage2Config) -> Stage2Result:
    """Train (or, with ``cfg.resume``, continue) a stage-2 run; see the module docstring."""
    cfg.check()
    t0 = time.perf_counter()
    info, device = ddp.init_distributed(resolve_device(cfg.device))
    from progeo.train.loop import cpu_threads

    try:
        with cpu_threads(cfg.threads), run_folder_lock(cfg, info, device), StopSignals("stage2") as stop:
            return _run(cfg, info, device, t0, stop)  # rank 0 locks the run folder
    finally:
        ddp.cleanup(info)


def _run(cfg: Stage2Config, info: ddp.DistInfo, device: torch.device, t0: float, stop: StopSignals) -> Stage2Result:
    start = prepare_out_dir(cfg, "stage2", outputs=(BEST_NAME, LAST_NAME), tables=("epochs", "iterations"),
                            is_main=info.is_main)
    ddp.barrier(info)  # every process has checked the folder before the main one writes to it
    out_dir = start.path
    stop.run_dir, stop.resumable = out_dir, bool(cfg.resume)
    seed_everything(cfg.seed)
    parts = build_parts(cfg, device, info)
    run = RunDir(out_dir, enabled=info.is_main, tensorboard=cfg.tensorboard, replaces=start.replaced)
    state = _State()
    if start.state_path is not None:
        state = _restore(start.state_path, parts, device)
        log.info("resuming %s at epoch %d, iteration %d (best R@1 %.2f)", out_dir, state.epoch, state.iteration, state.best_r1)
        run.drop_rows_after("iterations", "step", state.epoch * cfg.iterations_per_epoch + state.iteration)
        run.drop_rows_after("epochs", "epoch", state.epoch - 1)
    run.save_config(cfg)
    stop.resumable = True
    model = ddp.wrap_ddp(parts.model, info, device)
    scaler = make_grad_scaler(device, cfg.amp)
    part = ddp.rank_slice(cfg.batch_size, info)
    stopped = False
    stop.deferring = True  # from here a first signal stops after the current iteration, with the state saved
    try:
        while state.epoch < cfg.epochs:
            _train_epoch(cfg, parts, model, scaler, state, run, info, device, part, stop)
            _end_of_epoch(cfg, parts, state, run, info, device)
            if _stop_requested(stop, info, device):
                raise stop.stop(f"the end of epoch {state.epoch - 1}", run.state_path)
    except _Stop:
        stopped = True
        log.warning("stop_after=%d reached: stopping as if the run had been killed", cfg.stop_after)
    except BaseException:
        run.close()
        raise
    finally:
        stop.deferring = False
    result = Stage2Result(run.path, run.path / BEST_NAME if state.best_epoch >= 0 else None,
                          run.path / LAST_NAME if state.epoch > 0 else None, state.best_r1, state.best_epoch,
                          state.history, epochs_done=state.epoch, iterations_done=state.session_iterations,
                          stopped=stopped, model=parts.model, classifiers=parts.classifiers)
    if not stopped and info.is_main and cfg.test_set and result.best_model is not None:
        result.test_recalls = _test(cfg, parts, result.best_model, device, run)
    ddp.barrier(info)
    result.seconds = time.perf_counter() - t0
    run.write_metrics({"stage": "stage2", "text_loss": cfg.text_loss, "best_val_R@1": state.best_r1,
                       "best_epoch": state.best_epoch, "val_history": state.history, "test": result.test_recalls,
                       "seconds": result.seconds, "stopped_early": stopped, "world_size": info.world_size})
    run.close()
    return result


@dataclass
class _State:
    epoch: int = 0
    iteration: int = 0  # next iteration to run in ``epoch``
    best_r1: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    sums: dict = field(default_factory=dict)  # sums of the training losses so far in this epoch
    session_iterations: int = 0  # iterations run by this call (not saved)


def _stop_requested(stop: StopSignals, info, device) -> bool:
    """Whether any process got a stop signal (all processes then stop at the same iteration)."""
    return ddp.all_reduce_mean(1.0 if stop.requested else 0.0, info, device) > 0


def _train_epoch(cfg, parts: Stage2Parts, model, scaler, state: _State, run: RunDir, info, device, part,
                 stop: StopSignals) -> None:
    g = state.epoch % cfg.groups_num
    group, classifier, cls_opt = parts.groups[g], parts.classifiers[g], parts.classifier_optimizers[g]
    classifier.to(device)
    optimizer_to(cls_opt, device)
    text = parts.text_features[g].to(device) if parts.text_features else None
    parts.model.train()
    dataset = EpochBatches(group, parts.source, cfg.seed, state.epoch, state.iteration, cfg.iterations_per_epoch,
                           cfg.batch_size, part)
    bar = tqdm(epoch_loader(dataset, cfg.num_workers, device.type == "cuda"), total=len(dataset),
               desc=f"epoch {state.epoch} (group {g})", unit="it", disable=not (cfg.progress and info.is_main))
    sums = state.sums
    for images, labels in bar:
        it = state.iteration
        gen = torch_generator(cfg.seed, state.epoch, it, 7)
        x = parts.augment(images.to(device, non_blocking=True), gen, part=part, total=cfg.batch_size)
        y = labels.to(device)
        with autocast(device, enabled=cfg.amp):
            desc = model(x)
        losses = {"cosface": F.cross_entropy(classifier(desc, y), y)}
        if text is not None:
            losses["text"] = cfg.text_loss_weight * label_smoothed_cross_entropy(desc.float() @ text.t(), y, cfg.label_smoothing)
        if cfg.triplet_weight > 0:
            losses["triplet"] = cfg.triplet_weight * soft_triplet_loss(desc.float(), y, cfg.triplet_mining)
        loss = sum(losses.values())
        mean_loss = ddp.all_reduce_mean(float(loss.detach()), info, device)
        check_finite(mean_loss, where=f"stage 2 epoch {state.epoch} iteration {it}",
                     checkpoint=str(run.state_path) if run.state_path.exists() else None)
        parts.optimizer.zero_grad(set_to_none=True)
        cls_opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        ddp.all_reduce_mean_grads(classifier.parameters(), info)
        scaler.step(parts.optimizer)
        scaler.step(cls_opt)
        scaler.update()
        state.iteration += 1
        state.session_iterations += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["loss"] = sums.get("loss", 0.0) + mean_loss
        bar.set_postfix(loss=f"{mean_loss:.3f}")
        step = state.epoch * cfg.iterations_per_epoch + state.iteration
        if state.iteration % max(1, cfg.iterations_per_epoch // 20) == 0:
            run.log("iterations", {"step": step, "epoch": state.epoch, "iteration": state.iteration, "loss": mean_loss,
                                   **{k: float(v.detach()) for k, v in losses.items()}}, step=step)
        if cfg.checkpoint_every and state.iteration % cfg.checkpoint_every == 0 \
                and state.iteration < cfg.iterations_per_epoch:
            _save(run, parts, state, info)
        if cfg.stop_after is not None and state.session_iterations >= cfg.stop_after:
            raise _Stop()  # as if killed right after this step: nothing more is saved
        if state.iteration < cfg.iterations_per_epoch and _stop_requested(stop, info, device):
            _save(run, parts, state, info)
            raise stop.stop(f"epoch {state.epoch}, iteration {state.iteration}", run.state_path)
    classifier.to("cpu")
    optimizer_to(cls_opt, "cpu")


def _end_of_epoch(cfg, parts: Stage2Parts, state: _State, run: RunDir, info, device) -> None:
    from progeo.models.checkpoints import save_model

    epoch = state.epoch
    means = {k: v / cfg.iterations_per_epoch for k, v in state.sums.items()}
    state.sums = {}
    row = {"epoch": epoch, "group": epoch % cfg.groups_num, **{f"train_{k}": v for k, v in means.items()}}
    recalls: dict = {}
    if info.is_main:
        recalls = evaluate_model(parts.model, parts.val_set, cfg, device, parts.val_images)
    r1 = ddp.broadcast_float(float(recalls.get("R@1", -1.0)), info, device)
    state.epoch, state.iteration = epoch + 1, 0
    row.update({f"val_{k}": v for k, v in recalls.items() if k.startswith("R@")})
    state.history.append(row)
    if info.is_main:
        provenance = {"stage": "stage2", "epoch": epoch, "val": recalls, "text_loss": cfg.text_loss}
        save_model(parts.model, run.path / LAST_NAME, provenance=provenance)
        if r1 > state.best_r1:
            save_model(parts.model, run.path / BEST_NAME, provenance=provenance)
    if r1 > state.best_r1:
        state.best_r1, state.best_epoch = r1, epoch
    _save(run, parts, state, info)
    run.log("epochs", {"step": epoch, **row}, step=epoch)
    run.flush()
    log.info("epoch %d: loss %.4f, val R@1 %.2f (best %.2f at epoch %d)", epoch, means.get("loss", float("nan")),
             r1, state.best_r1, state.best_epoch)
    parts.model.train()


def _save(run: RunDir, parts: Stage2Parts, state: _State, info) -> None:
    if not info.is_main:
        return
    from progeo.train.loop import rng_state

    rng_meta, rng_tensors = rng_state()
    save_state(run.state_path, {
        "format_version": 1, "epoch": state.epoch, "iteration": state.iteration, "best_r1": state.best_r1,
        "best_epoch": state.best_epoch, "history": state.history, "sums": state.sums,
        "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "classifiers": [c.state_dict() for c in parts.classifiers],
        "classifier_optimizers": [o.state_dict() for o in parts.classifier_optimizers],
        "rng": rng_meta, "rng_tensors": rng_tensors,
    })


def _restore(path: Path, parts: Stage2Parts, device) -> _State:
    from progeo.errors import CheckpointError
    from progeo.train.loop import set_rng_state

    saved = load_state(path)
    try:
        parts.model.load_state_dict(saved["model"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        if len(saved["classifiers"]) != len(parts.classifiers):
            raise ValueError(f"{len(saved['classifiers'])} classifiers saved, {len(parts.classifiers)} groups now")
        for c, s in zip(parts.classifiers, saved["classifiers"]):
            c.load_state_dict(s)
        for o, s in zip(parts.classifier_optimizers, saved["classifier_optimizers"]):
            o.load_state_dict(s)
            optimizer_to(o, "cpu")
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"training state {path} does not fit this configuration ({exc}); resume with the "
                              "run's own config (same backbone, train set, groups and fc_output_dim)") from exc
    optimizer_to(parts.optimizer, device)
    set_rng_state(saved.get("rng", {}), saved.get("rng_tensors", {}))
    return _State(int(saved["epoch"]), int(saved["iteration"]), float(saved["best_r1"]), int(saved["best_epoch"]),
                  list(saved.get("history", [])), dict(saved.get("sums", {})))


def _test(cfg, parts: Stage2Parts, best: Path, device, run: RunDir) -> dict[str, dict]:
    """Test recalls of the best model on every test query folder (the database described once)."""
    from progeo.eval.evaluate import EvalConfig, evaluate
    from progeo.models.checkpoints import load_model

    model = load_model(best, device=device)
    eval_cfg = EvalConfig(positive_dist=cfg.positive_dist, recall_values=tuple(cfg.recall_values),
                          batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers, device=str(device),
                          amp=cfg.amp, progress=cfg.progress)
    results = evaluate(model, cfg.test_set, cfg.test_queries, eval_cfg)
    out = {}
    for r in results:
        log.info("test %s: %s", r.queries_folder, ", ".join(f"R@{n} {v:.1f}" for n, v in r.recall.recalls.items()))
        out[r.queries_folder] = r.recall.as_dict()
    return out


__all__ = ["run_stage2", "Stage2Result"]
