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
training state (model, AdamW, the zero-shot accuracy before) and everything around the steps
(resume, stop_after, signals, NaN stop) are the run engine's (:mod:`progeo.train.engine`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from progeo.config import PretrainConfig
from progeo.device import autocast
from progeo.errors import ConfigError, DatasetError
from progeo.io import atomic_path
from progeo.train.augment import AugmentConfig, BatchAugment
from progeo.train.engine import RunContext, TrainingStage, run_training
from progeo.train.loop import cosine_lr, optimizer_to, set_lr, torch_generator
from progeo.train.pretrain_data import read_captions, read_city_labels, zeroshot_accuracy

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
    cfg.check()
    if not cfg.world:
        raise DatasetError("pretraining needs a synthetic world folder: --world DIR (make one with `progeo synth`)")
    return run_training(Pretraining, cfg)


class Pretraining(TrainingStage):
    """Contrastive pretraining as a :class:`~progeo.train.engine.TrainingStage`."""

    kind, name, outputs = "pretrain", "pretraining", (CHECKPOINT_NAME,)

    def __init__(self, ctx: RunContext):
        from open_clip.loss import ClipLoss

        from progeo.models.backbones import image_size_of, load_clip, set_image_size

        super().__init__(ctx)
        cfg, world = self.cfg, Path(self.cfg.world)
        train_paths, captions = read_captions(world)
        if cfg.max_images is not None and cfg.max_images < len(train_paths):
            keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train_paths), cfg.max_images, replace=False))
            train_paths, captions = [train_paths[i] for i in keep], [captions[i] for i in keep]
        eval_paths, self.eval_labels, self.classes, self.folders = read_city_labels(world)
        clip = load_clip(cfg.backbone)
        native = image_size_of(clip.visual)
        if clip.family != "vit" and native != (cfg.image_size, cfg.image_size):
            raise ConfigError(f"{clip.arch} pretrains at its native {native[0]} px (its saved attention pool must "
                              f"match the architecture); use --image-size {native[0]} or a ViT backbone")
        set_image_size(clip.model.visual, cfg.image_size)
        self.arch, self.model = clip.arch, clip.model.to(ctx.device)
        with torch.no_grad():
            self.model.logit_scale.fill_(float(np.log(1.0 / cfg.init_temperature)))
        self.tokenizer = clip.tokenizer()
        self.tokens = self.tokenizer(captions)
        self.mean, self.std = clip.preprocess.mean, clip.preprocess.std
        self.train_images = _load_images(train_paths, cfg.image_size, cfg)
        self.eval_images = _load_images(eval_paths, cfg.image_size, cfg)
        jitter = 0.4 if cfg.augment else 0
        self.augment = BatchAugment(AugmentConfig(
            out_size=(cfg.image_size, cfg.image_size), mean=self.mean, std=self.std, brightness=jitter,
            contrast=jitter, saturation=0.0, hue=0.0, crop_scale=(0.6, 1.0), crop=cfg.augment))
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                                           eps=1e-6)
        self.loss_fn = ClipLoss()
        self.batch = min(cfg.batch_size, len(train_paths))
        self.steps = len(train_paths) // self.batch
        self.before = float("nan") if ctx.resuming else float(self.zeroshot().mean() * 100)
        log.info("pretraining %s from scratch on %d captioned images at %d px; zero-shot before: %.1f%% (chance "
                 "%.1f%%)", clip.arch, len(train_paths), cfg.image_size, self.before, 100 / len(self.classes))

    def zeroshot(self) -> np.ndarray:
        return zeroshot_accuracy(self.model, self.tokenizer, self.eval_images, self.eval_labels, self.classes,
                                 self.cfg.zeroshot_template, self.mean, self.std, self.device, self.cfg.eval_batch_size)

    def steps_in_epoch(self, epoch: int) -> int:
        return self.steps

    def begin_epoch(self, epoch: int, step: int) -> None:
        self.model.train()
        self.order = torch.randperm(len(self.tokens), generator=torch_generator(self.cfg.seed, epoch))

    def train_step(self, epoch, step, finite) -> dict[str, float]:
        cfg, device, total = self.cfg, self.device, self.steps * self.cfg.epochs
        set_lr(self.optimizer, cosine_lr(epoch * self.steps + step, total, cfg.lr,
                                         warmup=min(cfg.warmup_steps, total // 5)))
        idx = self.order[step * self.batch : (step + 1) * self.batch]
        x = self.augment(self.train_images[idx].to(device), torch_generator(cfg.seed, epoch, step, 3))
        with autocast(device, enabled=cfg.amp):
            img_f, txt_f, scale = self.model(x, self.tokens[idx].to(device))[:3]
        loss = self.loss_fn(img_f.float(), txt_f.float(), scale.float())
        value = finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, float(np.log(100.0)))
        return {"loss": value}

    def end_epoch(self, epoch: int, means: dict[str, float]) -> None:
        scale = float(self.model.logit_scale.detach().exp())
        self.run.log("epochs", {"epoch": epoch, "loss": means["loss"], "logit_scale": scale}, step=epoch)

    def state_dict(self) -> dict:
        return {"before": self.before, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        optimizer_to(self.optimizer, self.device)
        self.before = float(saved["before"])

    def finish(self, stopped: bool) -> PretrainResult:
        run, losses, before, chance = self.run, self.ctx.progress.losses, self.before, 100.0 / len(self.classes)
        if stopped:
            return PretrainResult(None, run.path, before, float("nan"), chance, epoch_losses=losses,
                                  seconds=time.perf_counter() - self.ctx.started, stopped=True)
        correct = self.zeroshot()
        after = float(correct.mean() * 100)
        folders = np.array(self.folders)
        per_folder = {f: float(correct[folders == f].mean() * 100) for f in sorted(set(self.folders))}
        checkpoint = run.path / CHECKPOINT_NAME
        classes = [c for c, _ in self.classes]
        meta = {"arch": self.arch, "image_size": self.cfg.image_size, "zeroshot_top1": after, "classes": classes}
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.model.state_dict().items()}
        from safetensors.torch import save_file

        with atomic_path(checkpoint) as tmp:
            save_file(state, str(tmp), metadata={"progeo_pretrain": json.dumps(meta)})
        seconds = time.perf_counter() - self.ctx.started
        run.write_metrics({"stage": "pretrain", "arch": self.arch, "train_images": len(self.tokens),
                           "zeroshot": {"before": before, "after": after, "chance": chance, "per_folder": per_folder,
                                        "classes": classes, "images": int(len(self.eval_labels))},
                           "epoch_losses": losses, "checkpoint": str(checkpoint), "seconds": seconds})
        log.info("pretraining done in %.1f s: loss %.3f -> %.3f; zero-shot city top-1 %.1f%% -> %.1f%% (chance "
                 "%.1f%%); per folder %s; checkpoint %s", seconds, losses[0], losses[-1], before, after, chance,
                 ", ".join(f"{k} {v:.1f}%" for k, v in per_folder.items()), checkpoint)
        return PretrainResult(checkpoint, run.path, before, after, chance, per_folder, losses, seconds)

    @classmethod
    def finished(cls, folder: Path, metrics: dict) -> PretrainResult:
        z = metrics.get("zeroshot", {})
        return PretrainResult(folder / CHECKPOINT_NAME, folder, float(z.get("before", float("nan"))),
                              float(z.get("after", float("nan"))), float(z.get("chance", float("nan"))),
                              dict(z.get("per_folder", {})), list(metrics.get("epoch_losses", [])),
                              already_finished=True)
