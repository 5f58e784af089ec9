"""What a stage-2 run is made of: data, model, classifiers, optimizers, text features, augmentation."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from progeo.config import Stage2Config, eval_config
from progeo.errors import ConfigError
from progeo.losses import CosFace
from progeo.train.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, BatchAugment
from progeo.train.class_batches import ImageSource, PreloadedImages, preload_bytes

log = logging.getLogger(__name__)


@dataclass
class Stage2Parts:
    groups: list
    source: ImageSource
    model: torch.nn.Module  # GeoLocalizer, on the device
    optimizer: torch.optim.Optimizer
    classifiers: list[CosFace]  # on the CPU between their epochs
    classifier_optimizers: list[torch.optim.Optimizer]
    text_features: list[torch.Tensor]  # per group, n_classes x D on the CPU (empty without text loss)
    augment: BatchAugment
    val_set: object
    val_images: torch.Tensor | None = None  # the val set decoded once (uint8), when it is small


def build_parts(cfg: Stage2Config, device: torch.device, info) -> Stage2Parts:
    from progeo.data.test_sets import TestSet
    from progeo.data.train_sets import TrainSet
    from progeo.models.backbones import load_clip
    from progeo.models.geolocalizer import GeoLocalizer

    if not cfg.train_set or not cfg.val_set:
        raise ConfigError("stage 2 needs --train-set FOLDER and --val-set FOLDER (train_set / val_set in a config file)")
    if cfg.loss.text_loss and not cfg.prompts:
        raise ConfigError("stage 2 with the text loss needs the stage-1 prompts: --prompts FILE "
                          "(or --no-text-loss for plain CosPlace training)")
    train_set = TrainSet.open(cfg.train_set, cfg.groups, cache_dir=cfg.groups_cache_dir)
    groups = _train_groups(cfg, train_set)
    val_set = TestSet(cfg.val_set, cfg.val_queries, cfg.eval.positive_dist)
    if cfg.test_set:
        for queries in cfg.test_queries:  # fail now, not after hours of training
            TestSet(cfg.test_set, queries, cfg.eval.positive_dist)

    clip = load_clip(cfg.model.backbone, weights=cfg.model.weights, quick_gelu=cfg.model.quick_gelu)
    text_features = _text_features(cfg, clip, groups, device) if cfg.loss.text_loss else []
    model = GeoLocalizer.from_clip(clip, fc_output_dim=cfg.fc_output_dim, image_size=cfg.image_size,
                                   provenance={"train_set": str(cfg.train_set), "text_loss": cfg.loss.text_loss})
    if cfg.normalization == "imagenet":
        model.config.preprocess = dataclasses.replace(model.config.preprocess, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if text_features and text_features[0].shape[1] != model.descriptor_dim:
        raise ConfigError(f"the text loss compares {model.descriptor_dim}-d descriptors with {text_features[0].shape[1]}-d "
                          f"text features; use fc_output_dim={text_features[0].shape[1]} (or --no-text-loss)")
    trainable = model.freeze(freeze_cnn=cfg.freeze_cnn, freeze_trans=cfg.freeze_trans, train_all_layers=cfg.train_all_layers)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    torch.manual_seed(cfg.seed)  # identical classifiers in every process
    classifiers = [CosFace(model.descriptor_dim, len(g), s=cfg.loss.cosface_s, m=cfg.loss.cosface_m) for g in groups]
    classifier_optimizers = [torch.optim.Adam(c.parameters(), lr=cfg.optim.classifiers_lr) for c in classifiers]
    pre = model.preprocess_config
    augment = BatchAugment(AugmentConfig(model.image_size, pre.mean, pre.std, **dataclasses.asdict(cfg.augment)))
    source = _image_source(cfg, train_set, groups)
    val_images = None
    if info.is_main and preload_bytes(len(val_set), cfg.image_size) <= cfg.preload_max_gib * 2**30 / 4:
        val_images = PreloadedImages(val_set.images_paths, cfg.image_size, np.arange(len(val_set)),
                                     num_workers=cfg.num_workers, progress=cfg.progress).pixels
    log.info("stage 2: %s, %d-d descriptors, %d trainable tensors, groups %s, text loss %s, %d process(es)",
             clip.arch, model.descriptor_dim, len(trainable), [len(g) for g in groups], cfg.loss.text_loss,
             info.world_size)
    return Stage2Parts(groups, source, model, optimizer, classifiers, classifier_optimizers, text_features,
                       augment, val_set, val_images)


def _train_groups(cfg: Stage2Config, train_set) -> list:
    """progeo's first ``groups_num`` groups; with prompts that name their groups (imported from the
    authors, who number groups otherwise), the first ``groups_num`` of those, in the file's order."""
    from progeo.models.prompts import prompt_group_ids

    ids = prompt_group_ids(cfg.prompts) if cfg.loss.text_loss and cfg.prompts else None
    if ids is None:
        return train_set.first_groups(cfg.groups_num)
    if cfg.groups_num > len(ids):
        raise ConfigError(f"the prompts {cfg.prompts} hold {len(ids)} group(s); stage 2 with --groups-num "
                          f"{cfg.groups_num} needs as many: lower --groups-num to {len(ids)}")
    index = {tuple(gid): g for g, gid in enumerate(train_set.groups.group_ids.tolist())}
    missing = [gid for gid in ids[: cfg.groups_num] if gid not in index]
    if missing:
        raise ConfigError(f"the prompts {cfg.prompts} were learned for group(s) {missing[:3]}, which the train set "
                          f"{train_set.images.root} does not have with these groups parameters; use the same train set, "
                          "M, alpha, N, L and min_images_per_class as stage 1")
    return [train_set.group(index[gid]) for gid in ids[: cfg.groups_num]]


def _image_source(cfg: Stage2Config, train_set, groups) -> ImageSource:
    size = cfg.image_size
    used = np.concatenate([g.all_images()[0] for g in groups])
    need = preload_bytes(len(np.unique(used)), size)
    preload = cfg.preload_images if cfg.preload_images is not None else need <= cfg.preload_max_gib * 2**30
    if preload:
        return PreloadedImages(train_set.images, size, used, num_workers=cfg.num_workers, progress=cfg.progress)
    return ImageSource(train_set.images, size)


def _text_features(cfg: Stage2Config, clip, groups, device: torch.device) -> list[torch.Tensor]:
    """Text features of every class of every used group, from the frozen stage-1 prompts."""
    from progeo.device import autocast
    from progeo.models.prompts import load_prompts
    from progeo.models.text_encoder import ClipTextEncoder

    encoder = ClipTextEncoder.from_clip(clip).to(device).eval().requires_grad_(False)
    learners, info = load_prompts(cfg.prompts, encoder, architecture=clip.arch, device=device)
    have = [pl.n_classes for pl in learners]
    want = [len(g) for g in groups]
    if len(have) < len(want) or have[: len(want)] != want:
        raise ConfigError(
            f"the prompts {cfg.prompts} have {len(have)} group(s) with {have} classes, but stage 2 trains "
            f"{len(want)} group(s) with {want} classes; run stage 1 on the same train set with the same groups "
            f"parameters and --groups-num {len(want)} (or train stage 2 with --groups-num {len(have)})")
    out = []
    with torch.no_grad():
        for learner, n in zip(learners, want):
            feats = []
            for start in range(0, n, 256):
                labels = torch.arange(start, min(n, start + 256), device=device)
                with autocast(device, enabled=cfg.amp):
                    feats.append(learner.text_features(encoder, labels).float().cpu())
            out.append(torch.cat(feats))
    return out


def evaluate_model(model, test_set, cfg: Stage2Config, device: torch.device, images: torch.Tensor | None = None) -> dict:
    """Recall@N of ``model`` on ``test_set`` as a JSON-ready dict (``{"R@1": ..., ...}``)."""
    from progeo.eval.evaluate import evaluate

    eval_cfg = eval_config(cfg, device, positive_dist=test_set.positive_dist_threshold, channels_last=False)
    return evaluate(model, test_set, cfg=eval_cfg, images=images)[0].recall.as_dict()
