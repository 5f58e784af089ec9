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

The resumable training state (prompt learners, Adam, grad scaler) and everything around the
batches (resume, stop_after, signals, NaN stop) are the run engine's (:mod:`progeo.train.engine`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from progeo.config import Stage1Config
from progeo.device import autocast
from progeo.errors import ConfigError
from progeo.losses import image_text_supcon
from progeo.train.engine import RunContext, TrainingStage, run_training
from progeo.train.loop import cosine_lr, make_grad_scaler, optimizer_to, set_lr, torch_generator

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
    """The CLIP model of ``cfg.model``, frozen and in eval mode."""
    from progeo.models.backbones import load_clip

    clip = load_clip(cfg.model.backbone, weights=cfg.model.weights, quick_gelu=cfg.model.quick_gelu, device=device)
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
    cfg.check()
    if not cfg.train_set:
        raise ConfigError("stage 1 needs a training folder: --train-set FOLDER (train_set in a config file)")
    return run_training(Stage1, cfg)


def stage1_lr(epoch: int, cfg: Stage1Config) -> float:
    """The learning rate of stage-1 epoch ``epoch`` (a pure function of it, so a resumed run gets the same).

    ``per_group``: group ``g = epoch mod groups_num`` is at its ``k = epoch // groups_num``-th epoch of a
    cosine from ``lr`` to 0 over ``T = epochs // groups_num`` epochs (a group with one epoch more than
    ``T`` trains its last at 0, as ``CosineAnnealingLR(T_max=T)`` gives). ``global``: one cosine over all epochs.
    """
    if cfg.optim.lr_schedule == "global":
        return cosine_lr(epoch, cfg.epochs, cfg.optim.lr)
    return cosine_lr(epoch // cfg.groups_num, max(1, cfg.epochs // cfg.groups_num), cfg.optim.lr)


class Stage1(TrainingStage):
    """Stage 1 as a :class:`~progeo.train.engine.TrainingStage`: epoch ``e`` trains group ``e mod groups_num``."""

    kind, name, unit, outputs = "stage1", "stage 1", "batch", (PROMPTS_NAME,)

    def __init__(self, ctx: RunContext):
        from progeo.data.train_sets import TrainSet
        from progeo.models.prompts import PromptLearner
        from progeo.models.text_encoder import ClipTextEncoder

        super().__init__(ctx)
        cfg, device = self.cfg, self.device
        train_set = TrainSet.open(cfg.train_set, cfg.groups, cache_dir=cfg.groups_cache_dir)
        self.groups = train_set.first_groups(cfg.groups_num)
        self.clip = load_frozen_clip(cfg, device)
        self.feats, self.per_group, self.cache_file, self.hit = group_features(self.clip, self.groups, cfg, device)
        self.text_encoder = ClipTextEncoder.from_clip(self.clip).to(device)
        tokenizer = self.clip.tokenizer()
        torch.manual_seed(cfg.seed)
        self.learners = [PromptLearner.from_template(len(g), self.text_encoder, tokenizer, cfg.template).to(device)
                         for g in self.groups]
        self.optimizer = torch.optim.Adam([p for pl in self.learners for p in pl.parameters()], lr=cfg.optim.lr,
                                          weight_decay=cfg.optim.weight_decay)
        self.scaler = make_grad_scaler(device, cfg.amp)
        self.on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        log.info("stage 1: %d group(s), %s classes, %d images, %d epochs, batch %d on %s", len(self.groups),
                 [len(g) for g in self.groups], self.feats.shape[0], cfg.epochs, cfg.batch_size, device)

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-len(self.per_group[epoch % self.cfg.groups_num][1]) // self.cfg.batch_size)

    def begin_epoch(self, epoch: int, step: int) -> None:
        g = epoch % self.cfg.groups_num
        if g not in self.on_device:
            rows, labels = self.per_group[g]
            self.on_device[g] = (torch.from_numpy(np.array(self.feats[rows])).to(self.device),
                                 torch.from_numpy(labels).to(self.device))
        self.lr = stage1_lr(epoch, self.cfg)
        set_lr(self.optimizer, self.lr)
        order = torch.randperm(len(self.on_device[g][1]), generator=torch_generator(self.cfg.seed, epoch))
        self.order = order.to(self.device)

    def train_step(self, epoch, step, finite) -> dict[str, float]:
        cfg = self.cfg
        x_all, y_all = self.on_device[epoch % cfg.groups_num]
        idx = self.order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x, y = x_all[idx].float(), y_all[idx]
        classes, inverse = torch.unique(y, return_inverse=True)  # each class's prompt encoded once
        with autocast(self.device, enabled=cfg.amp):
            text = self.learners[epoch % cfg.groups_num].text_features(self.text_encoder, classes)[inverse]
        loss = image_text_supcon(x, text.float(), y, tau=cfg.temperature, normalize=cfg.normalize_features)
        value = finite(loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": value}

    def end_epoch(self, epoch: int, means: dict[str, float]) -> None:
        row = {"epoch": epoch, "group": epoch % self.cfg.groups_num, "loss": means["loss"], "lr": self.lr}
        self.run.log("epochs", row, step=epoch)

    def state_dict(self) -> dict:
        return {"learners": [pl.state_dict() for pl in self.learners], "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        if len(saved["learners"]) != len(self.learners):
            raise ValueError(f"{len(saved['learners'])} groups of prompts saved, {len(self.learners)} now")
        for pl, state in zip(self.learners, saved["learners"]):
            pl.load_state_dict(state)
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        optimizer_to(self.optimizer, self.device)

    def finish(self, stopped: bool) -> Stage1Result:
        from progeo.cache import weights_fingerprint
        from progeo.models.prompts import save_prompts

        cfg, run, losses, classes = self.cfg, self.run, self.ctx.progress.losses, [len(g) for g in self.groups]
        if stopped:
            return Stage1Result(None, run.path, losses, self.cache_file, self.hit, classes,
                                time.perf_counter() - self.ctx.started, stopped=True)
        prompts_path = run.path / PROMPTS_NAME
        extra = {"backbone": cfg.model.backbone, "weights": cfg.model.weights,
                 "image_weights_sha1": weights_fingerprint(self.clip.visual),
                 "train_set": str(Path(cfg.train_set).resolve()), "groups": dataclasses.asdict(cfg.groups),
                 "epochs": cfg.epochs, "final_loss": losses[-1]}
        save_prompts(prompts_path, self.learners, architecture=self.clip.arch, extra={"provenance": extra})
        seconds = time.perf_counter() - self.ctx.started
        run.write_metrics({"stage": "stage1", "first_loss": losses[0], "final_loss": losses[-1], "epochs": cfg.epochs,
                           "epoch_losses": losses, "classes_per_group": classes, "images": int(self.feats.shape[0]),
                           "feature_cache": str(self.cache_file), "feature_cache_hit": self.hit, "seconds": seconds,
                           "prompts": str(prompts_path)})
        log.info("stage 1 done in %.1f s: loss %.4f -> %.4f; prompts in %s", seconds, losses[0], losses[-1],
                 prompts_path)
        return Stage1Result(prompts_path, run.path, losses, self.cache_file, self.hit, classes, seconds)

    @classmethod
    def finished(cls, folder: Path, metrics: dict) -> Stage1Result:
        cache = metrics.get("feature_cache")
        return Stage1Result(folder / PROMPTS_NAME, folder, list(metrics.get("epoch_losses", [])),
                            Path(cache) if cache else None, bool(metrics.get("feature_cache_hit")),
                            list(metrics.get("classes_per_group", [])), already_finished=True)
