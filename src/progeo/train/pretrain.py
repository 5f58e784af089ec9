"""Contrastive image-text pretraining of a small CLIP from scratch on a synthetic world.

The demo cannot download OpenAI's weights, so it first makes its own aligned CLIP: a tiny
open_clip architecture (``tiny-vit``/``tiny-rn``, random init) trained with the CLIP loss
(symmetric cross-entropy over cosine similarities scaled by a learned temperature, open_clip's
``ClipLoss``) on the captions of the world's train images (``WORLD/captions.tsv``:
``path<TAB>caption``, paths relative to the world folder). Zero-shot city classification of
the held-out val/test images (``WORLD/labels.csv``: ``path,lat,lon,city,country``) is measured
before and after, and written to the log and ``RUN/metrics.json`` (:mod:`progeo.train.pretrain_data`).

Output: ``RUN/clip.safetensors``, an open_clip state dict that
``load_clip(arch, weights=PATH)`` / ``--backbone tiny-vit --weights PATH`` load. The resumable
training state (``RUN/checkpoints/state.safetensors``: model, AdamW, RNG, epoch, step, losses) is
written atomically after every epoch and every ``checkpoint_every`` steps; ``resume=RUN``
continues it exactly (:mod:`progeo.train.resume`). SIGINT/SIGTERM save it after the current step
and stop with the command that continues the run (:mod:`progeo.train.interrupt`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from progeo.config import PretrainConfig
from progeo.device import autocast, resolve_device
from progeo.errors import ConfigError, DatasetError
from progeo.io import atomic_path
from progeo.train.augment import AugmentConfig, BatchAugment
from progeo.train.loop import check_finite, cosine_lr, optimizer_to, seed_everything, set_lr, torch_generator
from progeo.train.pretrain_data import read_captions, read_city_labels, zeroshot_accuracy
from progeo.train.interrupt import StopSignals
from progeo.train.resume import (EpochProgress, Stopped, load_training_state, prepare_out_dir, run_folder_lock,
                                 save_training_state, state_mismatch)
from progeo.train.run_dir import RunDir

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "clip.safetensors"


@dataclass
class PretrainResult:
    checkpoint: Path | None  # None when the run stopped early
    run_dir: Path
    zeroshot_before: float  # top-1 % of the random initialisation
    zeroshot_accuracy: float  # top-1 % after pretraining, held-out val+test images (nan when stopped early)
    chance: float  # 100 / number of cities
    zeroshot_per_folder: dict[str, float] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False  # stop_after ended the run early (as if it had been killed)
    already_finished: bool = False  # resumed a finished run: nothing was trained or written


@dataclass
class _Progress(EpochProgress):
    before: float = float("nan")  # zero-shot top-1 % of the random initialisation


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _load_images(paths: list[str], size: int, cfg: PretrainConfig) -> torch.Tensor:
    from progeo.train.class_batches import PreloadedImages

    return PreloadedImages(paths, size, np.arange(len(paths)), num_workers=cfg.num_workers, progress=cfg.progress).pixels


def run_pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Pretrain (or, with ``cfg.resume``, continue pretraining) a tiny CLIP on ``cfg.world``."""
    from progeo.train.ddp import launched_by_torchrun
    from progeo.train.loop import cpu_threads

    cfg.check()
    if launched_by_torchrun():
        raise ConfigError("pretraining runs in one process; start it without torchrun (only stage 2 is distributed)")
    if not cfg.world:
        raise DatasetError("pretraining needs a synthetic world folder: --world DIR (make one with `progeo synth`)")
    with cpu_threads(cfg.threads), run_folder_lock(cfg), StopSignals("pretrain") as stop:
        return _pretrain(cfg, stop)


def _pretrain(cfg: PretrainConfig, stop: StopSignals) -> PretrainResult:
    from open_clip.loss import ClipLoss

    from progeo.models.backbones import image_size_of, load_clip, set_image_size

    t0 = time.perf_counter()
    start = prepare_out_dir(cfg, "pretrain", outputs=(CHECKPOINT_NAME,), tables=("epochs",))
    if start.finished is not None:
        return _finished(start.path, start.finished)
    stop.run_dir, stop.resumable = start.path, bool(cfg.resume)
    world = Path(cfg.world)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = RunDir(start.path, tensorboard=cfg.tensorboard, replaces=start.replaced)
    train_paths, captions = read_captions(world)
    if cfg.max_images is not None and cfg.max_images < len(train_paths):
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train_paths), cfg.max_images, replace=False))
        train_paths, captions = [train_paths[i] for i in keep], [captions[i] for i in keep]
    eval_paths, eval_labels, classes, folders = read_city_labels(world)

    clip = load_clip(cfg.backbone)
    native = image_size_of(clip.visual)
    if clip.family != "vit" and native != (cfg.image_size, cfg.image_size):
        raise ConfigError(f"{clip.arch} pretrains at its native {native[0]} px (its saved attention pool must match "
                          f"the architecture); use --image-size {native[0]} or a ViT backbone")
    set_image_size(clip.model.visual, cfg.image_size)
    model = clip.model.to(device)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(1.0 / cfg.init_temperature)))
    tokenizer = clip.tokenizer()
    tokens = tokenizer(captions)
    mean, std = clip.preprocess.mean, clip.preprocess.std
    train_images = _load_images(train_paths, cfg.image_size, cfg)
    eval_images = _load_images(eval_paths, cfg.image_size, cfg)

    def zeroshot() -> np.ndarray:
        return zeroshot_accuracy(model, tokenizer, eval_images, eval_labels, classes, cfg.zeroshot_template, mean, std,
                                 device, cfg.eval_batch_size)

    augment = BatchAugment(AugmentConfig(out_size=(cfg.image_size, cfg.image_size), mean=mean, std=std,
                                         brightness=0.4 if cfg.augment else 0, contrast=0.4 if cfg.augment else 0,
                                         saturation=0.0, hue=0.0, crop_scale=(0.6, 1.0), crop=cfg.augment))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    batch = min(cfg.batch_size, len(train_paths))
    steps_per_epoch = len(train_paths) // batch
    total = steps_per_epoch * cfg.epochs
    if start.state_path is not None:
        progress = _restore(start.state_path, model, optimizer, device)
        run.drop_rows_after("epochs", "epoch", progress.epoch - 1)
        log.info("resuming %s at epoch %d, step %d", run.path, progress.epoch, progress.step)
    else:
        progress = _Progress(before=float(zeroshot().mean() * 100))
    run.save_config(cfg)
    stop.resumable = True
    log.info("pretraining %s from scratch on %d captioned images at %d px; zero-shot before: %.1f%% (chance %.1f%%)",
             clip.arch, len(train_paths), cfg.image_size, progress.before, 100 / len(classes))

    def save() -> None:
        save_training_state(run.state_path, "pretrain", **progress.saved(), before=progress.before,
                            model=model.state_dict(), optimizer=optimizer.state_dict())

    model.train()
    bar = tqdm(total=cfg.epochs, initial=progress.epoch, desc="pretrain", unit="epoch", disable=not cfg.progress)
    stop.deferring = True  # from here a first signal stops after the current step, with the state saved
    try:
        while progress.epoch < cfg.epochs:
            epoch = progress.epoch
            order = torch.randperm(len(train_paths), generator=torch_generator(cfg.seed, epoch))
            while progress.step < steps_per_epoch:
                b = progress.step
                idx = order[b * batch : (b + 1) * batch]
                set_lr(optimizer, cosine_lr(epoch * steps_per_epoch + b, total, cfg.lr,
                                            warmup=min(cfg.warmup_steps, total // 5)))
                x = augment(train_images[idx].to(device), torch_generator(cfg.seed, epoch, b, 3))
                with autocast(device, enabled=cfg.amp):
                    img_f, txt_f, scale = model(x, tokens[idx].to(device))[:3]
                loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
                progress.total += check_finite(loss, where=f"pretraining epoch {epoch} step {b}",
                                               checkpoint=str(run.state_path) if run.state_path.exists() else None)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, float(np.log(100.0)))
                progress.step += 1
                progress.session_steps += 1
                if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 \
                        and progress.step < steps_per_epoch:
                    save()
                if cfg.stop_after is not None and progress.session_steps >= cfg.stop_after:
                    raise Stopped()
                if stop.requested and progress.step < steps_per_epoch:
                    save()
                    raise stop.stop(f"epoch {epoch}, step {progress.step}", run.state_path)
            progress.losses.append(progress.total / max(steps_per_epoch, 1))
            run.log("epochs", {"epoch": epoch, "loss": progress.losses[-1],
                               "logit_scale": float(model.logit_scale.detach().exp())}, step=epoch)
            run.flush()
            progress.epoch, progress.step, progress.total = epoch + 1, 0, 0.0
            save()  # after the log row: a run killed in between redoes the epoch and its row
            bar.update(1)
            bar.set_postfix(loss=f"{progress.losses[-1]:.3f}")
            if stop.requested:
                raise stop.stop(f"the end of epoch {epoch}", run.state_path)
    except Stopped:
        log.warning("stop_after=%d reached: stopping as if the run had been killed", cfg.stop_after)
        run.close()
        return PretrainResult(None, run.path, progress.before, float("nan"), 100.0 / len(classes),
                              epoch_losses=progress.losses, seconds=time.perf_counter() - t0, stopped=True)
    except BaseException:
        run.close()
        raise
    finally:
        stop.deferring = False
        bar.close()

    correct = zeroshot()
    after = float(correct.mean() * 100)
    per_folder = {f: float(correct[np.array(folders) == f].mean() * 100) for f in sorted(set(folders))}
    checkpoint = run.path / CHECKPOINT_NAME
    meta = {"arch": clip.arch, "image_size": cfg.image_size, "zeroshot_top1": after, "classes": [c for c, _ in classes]}
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    with atomic_path(checkpoint) as tmp:
        save_file(state, str(tmp), metadata={"progeo_pretrain": json.dumps(meta)})
    seconds = time.perf_counter() - t0
    chance = 100.0 / len(classes)
    losses, before = progress.losses, progress.before
    run.write_metrics({"stage": "pretrain", "arch": clip.arch, "train_images": len(train_paths),
                       "zeroshot": {"before": before, "after": after, "chance": chance, "per_folder": per_folder,
                                    "classes": [c for c, _ in classes], "images": int(len(eval_labels))},
                       "epoch_losses": losses, "checkpoint": str(checkpoint), "seconds": seconds, "finished": True})
    run.close()
    log.info("pretraining done in %.1f s: loss %.3f -> %.3f; zero-shot city top-1 %.1f%% -> %.1f%% (chance %.1f%%); "
             "per folder %s; checkpoint %s", seconds, losses[0] if losses else float("nan"),
             losses[-1] if losses else float("nan"), before, after, chance,
             ", ".join(f"{k} {v:.1f}%" for k, v in per_folder.items()), checkpoint)
    return PretrainResult(checkpoint, run.path, before, after, chance, per_folder, losses, seconds)


def _restore(path: Path, model: torch.nn.Module, optimizer, device: torch.device) -> _Progress:
    saved = load_training_state(path, "pretrain")
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise state_mismatch(path, exc) from exc
    optimizer_to(optimizer, device)
    return _Progress.from_saved(saved, before=float(saved["before"]))


def _finished(folder: Path, metrics: dict) -> PretrainResult:
    """The result of a run that had already finished (nothing is trained or written)."""
    z = metrics.get("zeroshot", {})
    return PretrainResult(folder / CHECKPOINT_NAME, folder, float(z.get("before", float("nan"))),
                          float(z.get("after", float("nan"))), float(z.get("chance", float("nan"))),
                          dict(z.get("per_folder", {})), list(metrics.get("epoch_losses", [])), already_finished=True)
