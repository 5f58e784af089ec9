"""Contrastive image-text pretraining of a small CLIP from scratch on a synthetic world.

The demo cannot download OpenAI's weights, so it first makes its own aligned CLIP: a tiny
open_clip architecture (``tiny-vit``/``tiny-rn``, random init) trained with the CLIP loss
(symmetric cross-entropy over cosine similarities scaled by a learned temperature, open_clip's
``ClipLoss``) on the captions of the world's train images (``WORLD/captions.tsv``:
``path<TAB>caption``, paths relative to the world folder). Zero-shot city classification of
the held-out val/test images (``WORLD/labels.csv``: ``path,lat,lon,city,country``) is measured
before and after, and written to the log and ``RUN/metrics.json``.

Output: ``RUN/clip.safetensors``, an open_clip state dict that
``load_clip(arch, weights=PATH)`` / ``--backbone tiny-vit --weights PATH`` load.
"""

from __future__ import annotations

import csv
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
from progeo.train.loop import check_finite, cosine_lr, seed_everything, set_lr, torch_generator
from progeo.train.run_dir import RunDir

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "clip.safetensors"
HELD_OUT = ("val/", "test/")


@dataclass
class PretrainResult:
    checkpoint: Path
    run_dir: Path
    zeroshot_before: float  # top-1 % of the random initialisation
    zeroshot_accuracy: float  # top-1 % after pretraining, held-out val+test images
    chance: float  # 100 / number of cities
    zeroshot_per_folder: dict[str, float] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def read_captions(world: Path, prefix: str = "train/") -> tuple[list[str], list[str]]:
    """(absolute paths, captions) of the world's images whose path starts with ``prefix``."""
    path = world / "captions.tsv"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; pretraining needs a synthetic world made by `progeo synth` "
                           "(captions.tsv: one 'path<TAB>caption' line per image)")
    paths, captions = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            rel, sep, text = line.partition("\t")
            if not sep or not text.strip():
                raise DatasetError(f"{path} line {n}: expected 'path<TAB>caption', got {line[:80]!r}")
            if rel.startswith(prefix):
                paths.append(str(world / rel))
                captions.append(text.strip())
    if not paths:
        raise DatasetError(f"{path} has no caption for images under {prefix!r}; regenerate the world")
    return paths, captions


def read_city_labels(world: Path) -> tuple[list[str], np.ndarray, list[tuple[str, str]], list[str]]:
    """Held-out images: (absolute paths, city label ids, [(city, country)] classes, folder per image)."""
    path = world / "labels.csv"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; it lists path,lat,lon,city,country of the world's images")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("path", "").startswith(HELD_OUT)]
    missing = {"path", "city", "country"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise DatasetError(f"{path} has no val/test rows with path, city and country columns; regenerate the world")
    classes = sorted({(r["city"], r["country"]) for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[(r["city"], r["country"])] for r in rows], dtype=np.int64)
    folders = [r["path"].rsplit("/", 1)[0] if r["path"].startswith("test/") else "val" for r in rows]
    return [str(world / r["path"]) for r in rows], labels, classes, folders


def zeroshot_accuracy(model, tokenizer, images: torch.Tensor, labels: np.ndarray, classes, template: str,
                      mean, std, device, batch_size: int = 256) -> np.ndarray:
    """Per-image correctness (bool array) of zero-shot classification into ``classes``, by GEM's zero-shot
    rule (:mod:`progeo.geo.zeroshot`: prompt-ensembled class texts, cosine similarity, best class)."""
    from progeo.geo.zeroshot import ensemble_text_features, zeroshot_scores

    model.eval()
    texts = [template.format(city=c, country=k) for c, k in classes]
    with torch.no_grad():
        t = model.encode_text(tokenizer(texts).to(device)).float().cpu().numpy()
        feats = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float() / 255.0
            x = (x - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(std, device=device).view(1, 3, 1, 1)
            with autocast(device):
                feats.append(model.encode_image(x).float().cpu())
    model.train()
    scores = zeroshot_scores(torch.cat(feats).numpy(), ensemble_text_features(t[:, None, :]))
    return scores.argmax(1) == labels


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
    """Pretrain a tiny CLIP on ``cfg.world``; returns the checkpoint path and the zero-shot accuracies."""
    from progeo.train.loop import cpu_threads

    with cpu_threads(cfg.threads):
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> PretrainResult:
    from open_clip.loss import ClipLoss

    from progeo.models.backbones import image_size_of, load_clip, set_image_size

    cfg.check()
    from progeo.train.ddp import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError("pretraining runs in one process; start it without torchrun (only stage 2 is distributed)")
    if not cfg.world:
        raise DatasetError("pretraining needs a synthetic world folder: --world DIR (make one with `progeo synth`)")
    t0 = time.perf_counter()
    world = Path(cfg.world)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    run = RunDir(cfg.out_dir, tensorboard=cfg.tensorboard)
    run.save_config(cfg)
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
    before = zeroshot_accuracy(model, tokenizer, eval_images, eval_labels, classes, cfg.zeroshot_template, mean, std,
                               device, cfg.eval_batch_size).mean() * 100
    log.info("pretraining %s from scratch on %d captioned images at %d px; zero-shot before: %.1f%% (chance %.1f%%)",
             clip.arch, len(train_paths), cfg.image_size, before, 100 / len(classes))

    augment = BatchAugment(AugmentConfig(out_size=(cfg.image_size, cfg.image_size), mean=mean, std=std,
                                         brightness=0.4 if cfg.augment else 0, contrast=0.4 if cfg.augment else 0,
                                         saturation=0.0, hue=0.0, crop_scale=(0.6, 1.0), crop=cfg.augment))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    batch = min(cfg.batch_size, len(train_paths))
    steps_per_epoch = len(train_paths) // batch
    total = steps_per_epoch * cfg.epochs
    losses: list[float] = []
    model.train()
    step = 0
    for epoch in tqdm(range(cfg.epochs), desc="pretrain", unit="epoch", disable=not cfg.progress):
        order = torch.randperm(len(train_paths), generator=torch_generator(cfg.seed, epoch))
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            set_lr(optimizer, cosine_lr(step, total, cfg.lr, warmup=min(cfg.warmup_steps, total // 5)))
            x = augment(train_images[idx].to(device), torch_generator(cfg.seed, epoch, b, 3))
            with autocast(device, enabled=cfg.amp):
                img_f, txt_f, scale = model(x, tokens[idx].to(device))[:3]
            loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
            running += check_finite(loss, where=f"pretraining epoch {epoch} step {b}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, float(np.log(100.0)))
            step += 1
        losses.append(running / max(steps_per_epoch, 1))
        run.log("epochs", {"epoch": epoch, "loss": losses[-1], "logit_scale": float(model.logit_scale.detach().exp())}, step=epoch)

    correct = zeroshot_accuracy(model, tokenizer, eval_images, eval_labels, classes, cfg.zeroshot_template, mean, std,
                                device, cfg.eval_batch_size)
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
    run.write_metrics({"stage": "pretrain", "arch": clip.arch, "train_images": len(train_paths),
                       "zeroshot": {"before": float(before), "after": after, "chance": chance, "per_folder": per_folder,
                                    "classes": [c for c, _ in classes], "images": int(len(eval_labels))},
                       "epoch_losses": losses, "checkpoint": str(checkpoint), "seconds": seconds})
    run.close()
    log.info("pretraining done in %.1f s: loss %.3f -> %.3f; zero-shot city top-1 %.1f%% -> %.1f%% (chance %.1f%%); "
             "per folder %s; checkpoint %s", seconds, losses[0] if losses else float("nan"),
             losses[-1] if losses else float("nan"), before, after, chance,
             ", ".join(f"{k} {v:.1f}%" for k, v in per_folder.items()), checkpoint)
    return PretrainResult(checkpoint, run.path, float(before), after, chance, per_folder, losses, seconds)
