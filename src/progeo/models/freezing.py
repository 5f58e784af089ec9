"""Freezing the first layers of the image tower, as in the paper's stage 2 (SPEC 1.5)."""

from __future__ import annotations

from torch import nn

from progeo.errors import ConfigError
from progeo.models.backbones import visual_family

RESNET_STEM = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def freeze_visual(
    visual: nn.Module,
    *,
    freeze_cnn: int = 2,
    freeze_trans: int = 6,
    train_all_layers: bool = False,
    freeze_embeddings: bool = True,
) -> None:
    """Set ``requires_grad`` on the image tower as in the paper's stage 2.

    ResNet: the stem and ``layer1..layer{freeze_cnn}`` are frozen. ViT: the patch embedding
    (``conv1``), ``ln_pre``, the class and position embeddings (unless ``freeze_embeddings`` is
    False: the authors' code leaves those two trainable) and the first ``freeze_trans`` blocks.
    ``train_all_layers`` trains everything. Batch-norm statistics are not touched.
    """
    for p in visual.parameters():
        p.requires_grad = True
    if train_all_layers:
        return
    family = visual_family(visual)
    if family == "resnet":
        if not 0 <= freeze_cnn <= 4:
            raise ConfigError(f"freeze_cnn={freeze_cnn} must be between 0 and 4 (number of ResNet stages to freeze)")
        frozen = [getattr(visual, n) for n in RESNET_STEM] + [getattr(visual, f"layer{i}") for i in range(1, freeze_cnn + 1)]
        params = [p for m in frozen for p in m.parameters()]
    elif family == "vit":
        blocks = len(visual.transformer.resblocks)
        if not 0 <= freeze_trans <= blocks:
            raise ConfigError(f"freeze_trans={freeze_trans} must be between 0 and {blocks} (the ViT's block count)")
        params = list(visual.conv1.parameters()) + list(visual.ln_pre.parameters())
        if freeze_embeddings:
            params += [visual.class_embedding, visual.positional_embedding]
        params += [p for blk in visual.transformer.resblocks[:freeze_trans] for p in blk.parameters()]
    else:
        raise ConfigError(f"partial freezing of a {type(visual).__name__} tower is not supported; use train_all_layers")
    for p in params:
        p.requires_grad = False
