"""ProGEO stage 1 (SPEC 1.4): learn class-specific prompts against frozen image features.

Both CLIP encoders are frozen. The image features of every image of the used groups are
computed once and cached (:mod:`progeo.train.features`). Each group has its own
:class:`~progeo.models.prompts.PromptLearner`; epoch ``e`` trains group ``e mod groups_num``
on its cached features in shuffled batches, with ``SupCon(image->text) + SupCon(text->image)``
(:func:`~progeo.losses.image_text_supcon`), Adam and a cosine learning-rate schedule over
the epochs. The result is one prompts file (``RUN/prompts.safetensors``) for stage 2.
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
from progeo.train.loop import check_finite, cosine_lr, make_grad_scaler, seed_everything, set_lr, torch_generator
from progeo.train.run_dir import RunDir

log = logging.getLogger(__name__)

PROMPTS_NAME = "prompts.safetensors"


@dataclass
class Stage1Result:
    prompts_path: Path
    run_dir: Path
    epoch_losses: list[float] = field(default_factory=list)
    feature_cache: Path | None = None
    cache_hit: bool = False
    classes_per_group: list[int] = field(default_factory=list)
    seconds: float = 0.0


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
    """Train the prompts of ``cfg.groups_num`` groups; returns where the prompts file is."""
    from progeo.train.loop import cpu_threads

    with cpu_threads(cfg.threads):
        return _stage1(cfg)


def _stage1(cfg: Stage1Config) -> Stage1Result:
    from progeo.data.train_sets import TrainSet
    from progeo.models.prompts import PromptLearner, save_prompts
    from progeo.models.text_encoder import ClipTextEncoder
    from progeo.train.features import weights_fingerprint

    cfg.check()
    from progeo.train.ddp import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError("stage 1 runs in one process; start it without torchrun (only stage 2 is distributed)")
    if not cfg.train_set:
        raise ConfigError("stage 1 needs a training folder: --train-set FOLDER (train_set in a config file)")
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = RunDir(cfg.out_dir, tensorboard=cfg.tensorboard)
    run.save_config(cfg)

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
    log.info("stage 1: %d group(s), %s classes, %d images, %d epochs, batch %d on %s", len(groups),
             [len(g) for g in groups], feats.shape[0], cfg.epochs, cfg.batch_size, device)

    on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    losses: list[float] = []
    bar = tqdm(range(cfg.epochs), desc="stage 1", unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        g = epoch % cfg.groups_num
        if g not in on_device:
            rows, labels = per_group[g]
            on_device[g] = (torch.from_numpy(np.array(feats[rows])).to(device),
                            torch.from_numpy(labels).to(device))
        x_all, y_all = on_device[g]
        learner = learners[g]
        lr = cosine_lr(epoch, cfg.epochs, cfg.lr)
        set_lr(optimizer, lr)
        order = torch.randperm(len(y_all), generator=torch_generator(cfg.seed, epoch)).to(device)
        total, batches = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x, y = x_all[idx].float(), y_all[idx]
            classes, inverse = torch.unique(y, return_inverse=True)  # each class's prompt encoded once
            with autocast(device, enabled=cfg.amp):
                text = learner.text_features(text_encoder, classes)[inverse]
            loss = image_text_supcon(x, text.float(), y, tau=cfg.temperature, normalize=cfg.normalize_features)
            value = check_finite(loss, where=f"stage 1 epoch {epoch} batch {batches}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += value
            batches += 1
        losses.append(total / max(batches, 1))
        run.log("epochs", {"epoch": epoch, "group": g, "loss": losses[-1], "lr": lr}, step=epoch)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    prompts_path = run.path / PROMPTS_NAME
    extra = {"backbone": cfg.backbone, "weights": cfg.weights, "image_weights_sha1": weights_fingerprint(clip.visual),
             "train_set": str(Path(cfg.train_set).resolve()), "groups": {k: getattr(cfg, k) for k in
             ("M", "alpha", "N", "L", "min_images_per_class")}, "epochs": cfg.epochs,
             "final_loss": losses[-1] if losses else None}
    save_prompts(prompts_path, learners, architecture=clip.arch, extra={"provenance": extra})
    seconds = time.perf_counter() - t0
    run.write_metrics({"stage": "stage1", "first_loss": losses[0] if losses else None,
                       "final_loss": losses[-1] if losses else None, "epochs": cfg.epochs,
                       "classes_per_group": [len(g) for g in groups], "images": int(feats.shape[0]),
                       "feature_cache": str(cache_file), "feature_cache_hit": hit, "seconds": seconds,
                       "prompts": str(prompts_path)})
    run.close()
    log.info("stage 1 done in %.1f s: loss %.4f -> %.4f; prompts in %s", seconds, losses[0], losses[-1], prompts_path)
    return Stage1Result(prompts_path, run.path, losses, cache_file, hit, [len(g) for g in groups], seconds)
