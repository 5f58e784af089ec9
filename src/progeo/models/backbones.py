"""CLIP backbones through open_clip: loading, preprocessing, feature access, image size.

Two vision families are first-class (the paper's): open_clip's ``ModifiedResNet`` (RN50, RN101,
``tiny-rn``) and ``VisionTransformer`` (ViT-B/16, ViT-B/32, ``tiny-vit``). Other open_clip towers
load and give their CLIP image embedding, but have no feature map, resizing or partial freezing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from progeo.device import resolve_device
from progeo.errors import ConfigError
from progeo.models import registry
from progeo.models.pretrained import resolve_pretrained
from progeo.models.state_dicts import (CLIP_EXTRA_KEYS, check_state_dict, fill_bn_counters, is_torchscript_archive,
                                      read_state_dict)

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the ProGEO / CosPlace training and test code normalize with
IMAGENET_STD = (0.229, 0.224, 0.225)


def size_pair(size) -> tuple[int, int]:
    """``(height, width)`` of an image size given as one int or a pair."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


@dataclass(frozen=True)
class PreprocessConfig:
    """How images must be prepared for a model; saved with it. ``image_size`` is (height, width).

    ``test_resize``: whether evaluation resizes test images to ``image_size`` (progeo's default,
    and the authors' ``--resize_test_imgs``), or feeds them at their native size (the authors'
    default test protocol, used for their ResNet models; a ViT takes only its own size).
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # open_clip's vocabulary: shortest | longest | squash
    test_resize: bool = True

    def to_dict(self) -> dict:
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode, "test_resize": self.test_resize}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        try:
            return cls(image_size=size_pair(d["image_size"]), mean=tuple(float(v) for v in d["mean"]),
                       std=tuple(float(v) for v in d["std"]), interpolation=str(d.get("interpolation", "bicubic")),
                       resize_mode=str(d.get("resize_mode", "shortest")), test_resize=bool(d.get("test_resize", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"preprocessing config {d!r} is malformed ({exc}); it needs image_size, mean and std") from exc

    def with_size(self, size) -> PreprocessConfig:
        return dataclasses.replace(self, image_size=size_pair(size))

    def with_normalization(self, normalization: str) -> PreprocessConfig:
        """``"clip"``: keep the weights' own mean/std; ``"imagenet"``: ImageNet's (the authors' pipeline)."""
        if normalization == "clip":
            return self
        if normalization == "imagenet":
            return dataclasses.replace(self, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        raise ConfigError(f"normalization {normalization!r} is not 'clip' or 'imagenet'")


@dataclass
class ClipModel:
    """A loaded open_clip CLIP model with what it was built from."""

    model: nn.Module
    arch: str
    model_cfg: dict  # the open_clip config (with ``quick_gelu``) that rebuilds ``model``
    preprocess: PreprocessConfig
    source: str = "random init"
    extra: dict = field(default_factory=dict)

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def family(self) -> str:
        return visual_family(self.model.visual)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    def tokenizer(self):
        """open_clip's tokenizer for this architecture (context length from its text config)."""
        import open_clip

        return open_clip.get_tokenizer(self.arch, context_length=self.model_cfg["text_cfg"].get("context_length"))


def build_clip(model_cfg: dict) -> nn.Module:
    """Instantiate an open_clip model (random weights) from a model config dict."""
    import open_clip

    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ConfigError("CoCa-style models (multimodal_cfg) are not supported as progeo backbones")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**cfg)


def build_visual(model_cfg: dict, image_size=None) -> nn.Module:
    """Instantiate only the image tower of a model config (random weights), at ``image_size``."""
    import open_clip.model as oc_model

    cfg = copy.deepcopy(model_cfg)
    if image_size is not None:
        size = size_pair(image_size)  # ModifiedResNet takes one int (only its attention pool depends on it)
        cfg["vision_cfg"]["image_size"] = size if registry.vision_family(cfg) != "resnet" else size[0]
    builder = getattr(oc_model, "_build_vision_tower", None)
    if builder is None:  # pragma: no cover - older/newer open_clip without the helper
        return build_clip(cfg).visual
    return builder(cfg["embed_dim"], cfg["vision_cfg"], bool(cfg.get("quick_gelu", False)))


def load_clip(
    backbone: str,
    pretrained: str | None = None,
    *,
    weights: str | Path | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    device: str | torch.device = "cpu",
) -> ClipModel:
    """Load an open_clip CLIP model by name (``RN50:openai``, ``ViT-B/16``, ``tiny-rn``...).

    ``pretrained`` (a tag or a file) overrides the part after the colon; ``weights`` is a local
    file (OpenAI ``.pt``/TorchScript, state dict, open_clip ``.pt``/``.safetensors``) used
    instead of downloading, with the tag (if any) still giving the preprocessing. ``quick_gelu``
    defaults to what the tag says, True for OpenAI TorchScript files, else the config's value.
    """
    arch, tag = registry.split_backbone_spec(backbone)
    source = resolve_pretrained(arch, pretrained or tag, weights=weights, cache_dir=cache_dir, offline=offline)
    model_cfg = registry.architecture_config(arch)
    state = None
    if source is not None:
        state = read_state_dict(source.path, what="pretrained weights")
        if quick_gelu is None:
            quick_gelu = source.quick_gelu if source.quick_gelu is not None else (
                True if is_torchscript_archive(source.path) else None)
    if quick_gelu is not None:
        model_cfg["quick_gelu"] = bool(quick_gelu)
    model_cfg.setdefault("quick_gelu", False)
    model = build_clip(model_cfg)
    if state is not None:
        load_clip_weights(model, state, context=f"weights {source.path} for {arch}")
    pre = dict(source.preprocess) if source is not None else {}
    preprocess = PreprocessConfig(
        image_size=image_size_of(model.visual),
        mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)),
        interpolation=pre.get("interpolation", "bicubic"), resize_mode=pre.get("resize_mode", "shortest"),
    )
    desc = "random init" if source is None else (f"{arch}:{source.tag} ({source.path})" if source.tag else str(source.path))
    return ClipModel(model.to(resolve_device(device)), arch, model_cfg, preprocess, desc)


def load_clip_weights(model: nn.Module, state: dict[str, torch.Tensor], context: str) -> None:
    """Load a full CLIP state dict (OpenAI or open_clip names) strictly, explaining mismatches."""
    import open_clip

    state = {k: v for k, v in state.items() if k not in CLIP_EXTRA_KEYS}
    expected = model.state_dict()
    if "logit_scale" in state and "logit_scale" in expected and state["logit_scale"].shape != expected["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    if "visual.positional_embedding" in state:
        open_clip.model.resize_pos_embed(state, model)
    check_state_dict(expected, fill_bn_counters(expected, state), context)
    model.load_state_dict(state)


# -- feature access --------------------------------------------------------------------------


def visual_family(visual: nn.Module) -> str:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, ModifiedResNet):
        return "resnet"
    if isinstance(visual, VisionTransformer):
        return "vit"
    return "other"


def image_size_of(visual: nn.Module) -> tuple[int, int]:
    return size_pair(getattr(visual, "image_size", 224))


def resnet_feature_map(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last conv feature map of a ModifiedResNet (B x C x H/32 x W/32), before attention pooling."""
    x = visual.stem(images.to(visual.conv1.weight.dtype))
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def resnet_feature_dim(visual: nn.Module) -> int:
    return int(visual.layer4[-1].bn3.num_features)


def resnet_attention_pool(visual: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    """CLIP's attention-pooled, projected embedding of a ResNet feature map."""
    if getattr(visual, "attnpool", None) is None:
        raise ConfigError("this ResNet has no attention pool (the GeM descriptor model drops it)")
    return visual.attnpool(feature_map)


# -- image size ------------------------------------------------------------------------------


# How position-embedding grids are resized. ViT patch grids (e.g. 224 -> 512 px: 14x14 -> 32x32)
# follow the authors: their CLIP (OpenAI's code as modified in ProGEO, clip/model.py) resizes the
# ViT grid bicubically with align_corners=True (as torchvision's ViT does), and the paper's ViT
# models were trained and evaluated on such a grid. open_clip's own resize_pos_embed uses
# align_corners=False (and antialias); we keep that only where the authors never resize: the
# ResNet attention pool (their stage 1 feeds it 224 px images; their stage 2 drops it), so
# progeo's stage-1 features at other sizes stay what open_clip would compute.
VIT_POS_EMBED_ALIGN_CORNERS = True
ATTNPOOL_POS_EMBED_ALIGN_CORNERS = False


def interpolate_pos_embed(pos: torch.Tensor, old_grid, new_grid, prefix_tokens: int = 1, *,
                          align_corners: bool = VIT_POS_EMBED_ALIGN_CORNERS) -> torch.Tensor:
    """Resize a (prefix + H*W) x C position embedding to a new grid (bicubic); same tensor if equal.

    ``align_corners`` defaults to the authors' choice for ViT grids (see the comment above).
    """
    old_grid, new_grid = size_pair(old_grid), size_pair(new_grid)
    if old_grid == new_grid:
        return pos
    if pos.shape[0] != prefix_tokens + old_grid[0] * old_grid[1]:
        raise ConfigError(f"position embedding has {pos.shape[0]} rows, expected {prefix_tokens}+{old_grid[0]}x{old_grid[1]}")
    prefix, grid = pos[:prefix_tokens], pos[prefix_tokens:]
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=align_corners)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, grid], dim=0)


def set_image_size(visual: nn.Module, size, resize_attnpool: bool = True) -> None:
    """Adapt ``visual`` in place to input images of ``size``, interpolating position embeddings.

    ViT: the patch-grid position embedding (e.g. 224 -> 512 px: 14x14 -> 32x32 for patch 16),
    bicubic with align_corners=True as the authors do. ResNet: the attention pool's position
    embedding (7x7 -> 16x16), when the pool is kept, bicubic with open_clip's align_corners=False.
    """
    size = size_pair(size)
    family = visual_family(visual)
    if family == "vit":
        patch = size_pair(visual.patch_size)
        if size[0] % patch[0] or size[1] % patch[1]:
            raise ConfigError(f"image size {size} is not a multiple of the ViT patch size {patch}")
        new_grid = (size[0] // patch[0], size[1] // patch[1])
        if new_grid != tuple(visual.grid_size):
            resized = interpolate_pos_embed(visual.positional_embedding.detach(), visual.grid_size, new_grid)
            visual.positional_embedding = nn.Parameter(resized, requires_grad=visual.positional_embedding.requires_grad)
        visual.grid_size, visual.image_size = new_grid, size
    elif family == "resnet":
        if size[0] % 32 or size[1] % 32:
            raise ConfigError(f"image size {size} is not a multiple of 32 (the ResNet stride)")
        pool = getattr(visual, "attnpool", None)
        if pool is not None and resize_attnpool:
            old, new = math.isqrt(pool.positional_embedding.shape[0] - 1), (size[0] // 32, size[1] // 32)
            if (old, old) != new:
                resized = interpolate_pos_embed(pool.positional_embedding.detach(), old, new,
                                                align_corners=ATTNPOOL_POS_EMBED_ALIGN_CORNERS)
                pool.positional_embedding = nn.Parameter(resized, requires_grad=pool.positional_embedding.requires_grad)
        visual.image_size = size if size[0] != size[1] else size[0]
    elif size != image_size_of(visual):
        raise ConfigError(f"changing the image size of a {type(visual).__name__} tower is not supported")
