"""ProGEO stage 1 (SPEC 1.4): learn class-specific prompts against frozen image features.

Both CLIP encoders are frozen. The image features of every image of the used groups are
computed once and cached (:mod:`progeo.train.features`). Each group has its own
:class:`~progeo.models.prompts.PromptLearner`; epoch ``e`` trains group ``e mod groups_num``
on its cached features in shuffled batches, with ``SupCon(image->text) + SupCon(text->image)``
(:func:`~progeo.losses.image_text_supcon`) and Adam. The learning rate follows one cosine per
group over that group's own epochs, as the authors' code does (one ``CosineAnnealingLR`` per
group with ``T_max = epochs // groups_num``, stepped after each of its epochs);
``lr_schedule="global"`` gives one cosine over all epochs instead (:func:`stage1_lr`). The
result is one prompts file (``RUN/prompts.safetensors``) for stage 2.

The resumable training state (``RUN/checkpoints/state.safetensors``: prompt learners, Adam, RNG,
epoch, batch, losses) is written atomically after every epoch and every ``checkpoint_every``
batches; ``resume=RUN`` continues it exactly (:mod:`progeo.train.resume`). SIGINT/SIGTERM save the
state after the current batch and raise :class:`~progeo.train.interrupt.Interrupted` with the command
that continues the run (:mod:`progeo.train.interrupt`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from progeo.config import Stage1Config
from progeo.device import autocast, resolve_device
from progeo.errors import ConfigError
from progeo.losses import image_text_supcon
from progeo.train.loop import (check_finite, cosine_lr, make_grad_scaler, optimizer_to, seed_everything, set_lr,
                               torch_generator)
from progeo.train.interrupt import StopSignals
from progeo.train.resume import (EpochProgress, Stopped, load_training_state, prepare_out_dir, run_folder_lock,
                                 save_training_state, state_mismatch)
from progeo.train.run_dir import RunDir

log = logging.getLogger(__name__)

PROMPTS_NAME = "prompts.safetensors"


@dataclass
class Stage1Result:
    prompts_path: Path | None  # None when the run stopped early
    run_dir: Path
    epoch_losses: list[float] = field(default_factory=list)
    feature_cache: Path | None = None
    cache_hit: bool = False
    classes_per_group: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  # stop_after ended the run early (as if it had been killed)
    already_finished: bool = False  # resumed a finished run: nothing was trained or written


def load_frozen_clip(cfg, device: torch.device):
    """The CLIP model of ``cfg.backbone``/``cfg.weights``, frozen and in eval mode."""
    from progeo.models.backbones import load_clip

    clip = load_clip(cfg.backbone, weights=cfg.weights, quick_gelu=cfg.quick_gelu, device=device)
    clip.model.requires_grad_(False)
    clip.model.eval()
    return clip


def group_features(clip, groups, cfg: Stage1Config, device: torch.device):
    """Cached features of all images of ``groups``: (features N x D, [(rows, labels) per group], file, hit)."""
    from progeo.train.features import cached_image_features

    per_group, paths, start = [], [], 0
    for group in groups:
        indices, labels = group.all_images()
        paths.extend(group.images[int(i)] for i in indices)
        per_group.append((slice(start, start + len(indices)), np.asarray(labels, dtype=np.int64)))
        start += len(indices)
    feats, file, hit = cached_image_features(
        clip, paths, image_size=cfg.image_size, cache_dir=cfg.feature_cache_dir, batch_size=cfg.feature_batch_size,
        device=device, num_workers=cfg.num_workers, amp=cfg.amp, progress=cfg.progress)
    return feats, per_group, file, hit



def run_stage1(cfg: Stage1Config) -> Stage1Result:
    """Train (or, with ``cfg.resume``, continue) the prompts of ``cfg.groups_num`` groups."""
    from progeo.train.ddp import launched_by_torchrun
    from progeo.train.loop import cpu_threads

    cfg.check()
    if launched_by_torchrun():
        raise ConfigError("stage 1 runs in one process; start it without torchrun (only stage 2 is distributed)")
    if not cfg.train_set:
        raise ConfigError("stage 1 needs a training folder: --train-set FOLDER (train_set in a config file)")
    with cpu_threads(cfg.threads), run_folder_lock(cfg), StopSignals("stage1") as stop:
        return _stage1(cfg, stop)


def _stage1(cfg: Stage1Config, stop: StopSignals) -> Stage1Result:
    from progeo.data.train_sets import TrainSet
    from progeo.models.prompts import PromptLearner
    from progeo.models.text_encoder import ClipTextEncoder

    t0 = time.perf_counter()
    start = prepare_out_dir(cfg, "stage1", outputs=(PROMPTS_NAME,), tables=("epochs",))
    if start.finished is not None:
        return _finished(start.path, start.finished)
    stop.run_dir, stop.resumable = start.path, bool(cfg.resume)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = RunDir(start.path, tensorboard=cfg.tensorboard, replaces=start.replaced)

    train_set = TrainSet.open(cfg.train_set, cfg.groups_config(), cache_dir=cfg.groups_cache_dir)
    groups = train_set.first_groups(cfg.groups_num)
    clip = load_frozen_clip(cfg, device)
    feats, per_group, cache_file, hit = group_features(clip, groups, cfg, device)

    text_encoder = ClipTextEncoder.from_clip(clip).to(device)
    tokenizer = clip.tokenizer()
    torch.manual_seed(cfg.seed)
    learners = [PromptLearner.from_template(len(g), text_encoder, tokenizer, cfg.template).to(device) for g in groups]
    params = [p for pl in learners for p in pl.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = make_grad_scaler(device, cfg.amp)
    progress = EpochProgress()
    if start.state_path is not None:
        progress = _restore(start.state_path, learners, optimizer, scaler, device)
        run.drop_rows_after("epochs", "epoch", progress.epoch - 1)
        log.info("resuming %s at epoch %d, batch %d", run.path, progress.epoch, progress.step)
    run.save_config(cfg)
    stop.resumable = True
    log.info("stage 1: %d group(s), %s classes, %d images, %d epochs, batch %d on %s", len(groups),
             [len(g) for g in groups], feats.shape[0], cfg.epochs, cfg.batch_size, device)

    on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = tqdm(total=cfg.epochs, initial=progress.epoch, desc="stage 1", unit="epoch", disable=not cfg.progress)
    stop.deferring = True  # from here a first signal stops after the current batch, with the state saved
    try:
        while progress.epoch < cfg.epochs:
            g = progress.epoch % cfg.groups_num
            if g not in on_device:
                rows, labels = per_group[g]
                on_device[g] = (torch.from_numpy(np.array(feats[rows])).to(device), torch.from_numpy(labels).to(device))
            _train_epoch(cfg, progress, learners[g], text_encoder, optimizer, scaler, on_device[g], run,
                         (learners, optimizer, scaler), device, stop)
            bar.update(1)
            bar.set_postfix(loss=f"{progress.losses[-1]:.4f}")
    except Stopped:
        log.warning("stop_after=%d reached: stopping as if the run had been killed", cfg.stop_after)
        run.close()
        return Stage1Result(None, run.path, progress.losses, cache_file, hit, [len(g) for g in groups],
                            time.perf_counter() - t0, stopped=True)
    except BaseException:
        run.close()
        raise
    finally:
        stop.deferring = False
        bar.close()
    return _finish(cfg, run, clip, learners, groups, progress.losses, feats.shape[0], cache_file, hit, t0)


def stage1_lr(epoch: int, cfg: Stage1Config) -> float:
    """The learning rate of stage-1 epoch ``epoch`` (a pure function of it, so a resumed run gets the same).

    ``per_group``: group ``g = epoch mod groups_num`` is at its ``k = epoch // groups_num``-th epoch of a
    cosine from ``lr`` to 0 over ``T = epochs // groups_num`` epochs (a group with one epoch more than
    ``T`` trains its last at 0, as ``CosineAnnealingLR(T_max=T)`` gives). ``global``: one cosine over all epochs.
    """
    if cfg.lr_schedule == "global":
        return cosine_lr(epoch, cfg.epochs, cfg.lr)
    return cosine_lr(epoch // cfg.groups_num, max(1, cfg.epochs // cfg.groups_num), cfg.lr)


def _train_epoch(cfg: Stage1Config, progress: EpochProgress, learner, text_encoder, optimizer, scaler, data, run: RunDir,
                 saved, device: torch.device, stop: StopSignals) -> None:
    """Train group ``epoch mod groups_num`` for one epoch (from batch ``progress.step``), saving the state;
    after a stop signal, save it at the current batch and raise :class:`~progeo.train.interrupt.Interrupted`."""
    x_all, y_all = data
    epoch = progress.epoch
    lr = stage1_lr(epoch, cfg)
    set_lr(optimizer, lr)
    order = torch.randperm(len(y_all), generator=torch_generator(cfg.seed, epoch)).to(device)
    n_batches = -(-len(order) // cfg.batch_size)
    while progress.step < n_batches:
        idx = order[progress.step * cfg.batch_size : (progress.step + 1) * cfg.batch_size]
        x, y = x_all[idx].float(), y_all[idx]
        classes, inverse = torch.unique(y, return_inverse=True)  # each class's prompt encoded once
        with autocast(device, enabled=cfg.amp):
            text = learner.text_features(text_encoder, classes)[inverse]
        loss = image_text_supcon(x, text.float(), y, tau=cfg.temperature, normalize=cfg.normalize_features)
        value = check_finite(loss, where=f"stage 1 epoch {epoch} batch {progress.step}",
                             checkpoint=str(run.state_path) if run.state_path.exists() else None)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        progress.total += value
        progress.step += 1
        progress.session_steps += 1
        if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.step < n_batches:
            _save(run, progress, *saved)
        if cfg.stop_after is not None and progress.session_steps >= cfg.stop_after:
            raise Stopped()
        if stop.requested and progress.step < n_batches:
            _save(run, progress, *saved)
            raise stop.stop(f"epoch {epoch}, batch {progress.step}", run.state_path)
    progress.losses.append(progress.total / max(n_batches, 1))
    run.log("epochs", {"epoch": epoch, "group": epoch % cfg.groups_num, "loss": progress.losses[-1], "lr": lr},
            step=epoch)
    run.flush()
    progress.epoch, progress.step, progress.total = epoch + 1, 0, 0.0
    _save(run, progress, *saved)  # after the log row: a run killed in between redoes the epoch and its row
    if stop.requested:
        raise stop.stop(f"the end of epoch {epoch}", run.state_path)


def _save(run: RunDir, progress: EpochProgress, learners, optimizer, scaler) -> None:
    save_training_state(run.state_path, "stage1", **progress.saved(), learners=[pl.state_dict() for pl in learners],
                        optimizer=optimizer.state_dict(), scaler=scaler.state_dict())


def _restore(path: Path, learners, optimizer, scaler, device: torch.device) -> EpochProgress:
    saved = load_training_state(path, "stage1")
    try:
        if len(saved["learners"]) != len(learners):
            raise ValueError(f"{len(saved['learners'])} groups of prompts saved, {len(learners)} now")
        for pl, state in zip(learners, saved["learners"]):
            pl.load_state_dict(state)
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise state_mismatch(path, exc) from exc
    optimizer_to(optimizer, device)
    return EpochProgress.from_saved(saved)


def _finish(cfg: Stage1Config, run: RunDir, clip, learners, groups, losses: list[float], images: int, cache_file,
            hit: bool, t0: float) -> Stage1Result:
    from progeo.models.prompts import save_prompts
    from progeo.cache import weights_fingerprint

    prompts_path = run.path / PROMPTS_NAME
    extra = {"backbone": cfg.backbone, "weights": cfg.weights, "image_weights_sha1": weights_fingerprint(clip.visual),
             "train_set": str(Path(cfg.train_set).resolve()), "groups": {k: getattr(cfg, k) for k in
             ("M", "alpha", "N", "L", "min_images_per_class")}, "epochs": cfg.epochs,
             "final_loss": losses[-1] if losses else None}
    save_prompts(prompts_path, learners, architecture=clip.arch, extra={"provenance": extra})
    seconds = time.perf_counter() - t0
    classes = [len(g) for g in groups]
    run.write_metrics({"stage": "stage1", "first_loss": losses[0] if losses else None,
                       "final_loss": losses[-1] if losses else None, "epochs": cfg.epochs, "epoch_losses": losses,
                       "classes_per_group": classes, "images": int(images), "feature_cache": str(cache_file),
                       "feature_cache_hit": hit, "seconds": seconds, "prompts": str(prompts_path), "finished": True})
    run.close()
    log.info("stage 1 done in %.1f s: loss %.4f -> %.4f; prompts in %s", seconds, losses[0], losses[-1], prompts_path)
    return Stage1Result(prompts_path, run.path, losses, cache_file, hit, classes, seconds)


def _finished(folder: Path, metrics: dict) -> Stage1Result:
    """The result of a run that had already finished (nothing is trained or written)."""
    cache = metrics.get("feature_cache")
    return Stage1Result(folder / PROMPTS_NAME, folder, list(metrics.get("epoch_losses", [])),
                        Path(cache) if cache else None, bool(metrics.get("feature_cache_hit")),
                        list(metrics.get("classes_per_group", [])), already_finished=True)
