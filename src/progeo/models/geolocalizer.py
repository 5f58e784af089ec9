"""The geo-localization model: images -> place descriptors (SPEC 1.3).

``GeoLocalizer = backbone (CLIP image tower) + aggregation (descriptor head)``:

- ResNet: last feature map (attention pool dropped) -> :class:`~progeo.models.heads.GeMHead`.
- ViT: CLIP's image embedding (CLS -> ln_post -> proj) -> :class:`ClipEmbeddingHead`
  (no normalization by default, as in the paper's code; ``normalize=True`` L2-normalizes).

The eval code's contract: ``model.describe(images, device=...) -> np.ndarray (B x D, float32)``,
``model.preprocess_config`` (image size, mean, std, interpolation, resize mode),
``model.descriptor_dim`` and, optionally, ``model.metric``.

Search metric (``ModelConfig.metric``, saved in ``config.json``): how descriptors are compared
in evaluation and localization. ``"cosine"`` where the head L2-normalizes (GeM; the CLIP head
with ``normalize``), ``"l2"`` (Euclidean distance of the raw descriptors) for the CLIP head
without normalization, as the ProGEO authors evaluate their ViT models (faiss ``IndexFlatL2``).
A config saved without the field gets that same default.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from progeo.device import prefers_channels_last, resolve_device
from progeo.errors import ConfigError
from progeo.eval.search import METRICS
from progeo.models import backbones
from progeo.models.backbones import ClipModel, PreprocessConfig
from progeo.models.freezing import freeze_visual
from progeo.models.heads import ClipEmbeddingHead, GeMHead
from progeo.models.inference import evaluating, run_batched

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def default_metric(head: str, normalize: bool) -> str:
    """``"cosine"`` for a head whose descriptors are unit vectors (GeM, or CLIP with
    ``normalize``), else ``"l2"``: raw descriptors ranked by Euclidean distance (the authors')."""
    return "cosine" if head == "gem" or normalize else "l2"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a GeoLocalizer (saved as ``config.json``)."""

    arch: str
    clip_config: dict  # open_clip model config, ``quick_gelu`` included
    head: str  # "gem" (ResNet) | "clip" (CLIP embedding)
    fc_output_dim: int
    preprocess: PreprocessConfig
    normalize: bool = False  # L2-normalize the CLIP embedding (head "clip"); GeM always normalizes
    provenance: dict = field(default_factory=dict)
    metric: str | None = None  # "cosine" | "l2"; None: the head's default (:func:`default_metric`)

    def __post_init__(self) -> None:
        if self.metric is None:
            self.metric = default_metric(self.head, self.normalize)
        if self.metric not in METRICS:
            raise ConfigError(f"model config metric={self.metric!r}; expected one of {', '.join(METRICS)}")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocess.image_size

    def to_dict(self) -> dict:
        return {
            "format": "progeo-model", "format_version": FORMAT_VERSION, "arch": self.arch, "head": self.head,
            "fc_output_dim": self.fc_output_dim, "normalize": self.normalize, "metric": self.metric,
            "image_size": list(self.image_size),
            "preprocess": self.preprocess.to_dict(), "clip_config": self.clip_config, "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if d.get("format") != "progeo-model":
            raise ConfigError(f"not a progeo model config (format={d.get('format')!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ConfigError(f"model format version {d['format_version']} is newer than this progeo; upgrade progeo")
        missing = [k for k in ("arch", "head", "fc_output_dim", "preprocess", "clip_config") if k not in d]
        if missing:
            raise ConfigError(f"model config lacks field(s) {', '.join(missing)}")
        if d["head"] not in ("gem", "clip"):
            raise ConfigError(f"model config head={d['head']!r}; expected 'gem' or 'clip'")
        return cls(arch=str(d["arch"]), clip_config=dict(d["clip_config"]), head=d["head"],
                   fc_output_dim=int(d["fc_output_dim"]), preprocess=PreprocessConfig.from_dict(d["preprocess"]),
                   normalize=bool(d.get("normalize", False)), provenance=dict(d.get("provenance") or {}),
                   metric=d.get("metric"))


class GeoLocalizer(nn.Module):
    """Image -> descriptor model. Build with :meth:`from_clip`, :meth:`from_config` or ``progeo.load_model``."""

    def __init__(self, backbone: nn.Module, config: ModelConfig):
        super().__init__()
        self.family = backbones.visual_family(backbone)
        if config.head == "gem":
            if self.family != "resnet":
                raise ConfigError(f"the GeM head needs a ResNet backbone, {config.arch} is {self.family}")
            backbone.attnpool = None  # not used by the descriptor, not saved
            aggregation: nn.Module = GeMHead(backbones.resnet_feature_dim(backbone), config.fc_output_dim)
        else:
            aggregation = ClipEmbeddingHead(config.normalize)
        self.backbone = backbone
        self.aggregation = aggregation
        self.config = config

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_clip(cls, clip: ClipModel, *, fc_output_dim: int | None = None, image_size=None,
                  normalize: bool = False, normalization: str = "clip", provenance: dict | None = None,
                  metric: str | None = None) -> GeoLocalizer:
        """A descriptor model on a copy of ``clip``'s image tower (the CLIP model is left intact).

        ``fc_output_dim`` defaults to CLIP's embedding size (the paper's sizes: RN50 1024, RN101,
        ViT-B/16 and ViT-B/32 512); ViT models have no projection head, so it must equal it.
        ``image_size`` (e.g. 512) resizes ViT position embeddings (bicubic, align_corners=True as the authors). ``normalization``:
        ``"clip"`` keeps the weights' mean/std, ``"imagenet"`` records ImageNet's (the authors'
        stage-2 and test pipelines normalize with it). ``metric``: the search metric (None: the head's).
        """
        family = clip.family
        dim = int(fc_output_dim or clip.embed_dim)
        if family != "resnet" and dim != clip.embed_dim:
            raise ConfigError(
                f"{clip.arch} descriptors are CLIP's {clip.embed_dim}-d image embedding; "
                f"fc_output_dim={dim} is not possible (omit it or use {clip.embed_dim})")
        visual = copy.deepcopy(clip.visual)
        size = backbones.size_pair(image_size) if image_size else backbones.image_size_of(visual)
        backbones.set_image_size(visual, size, resize_attnpool=False)
        config = ModelConfig(arch=clip.arch, clip_config=copy.deepcopy(clip.model_cfg),
                             head="gem" if family == "resnet" else "clip", fc_output_dim=dim,
                             preprocess=clip.preprocess.with_size(size).with_normalization(normalization), normalize=normalize,
                             provenance={"backbone_weights": clip.source, **(provenance or {})}, metric=metric)
        return cls(visual, config)

    @classmethod
    def from_config(cls, config: ModelConfig) -> GeoLocalizer:
        """A randomly initialised model of the architecture described by ``config``."""
        visual = backbones.build_visual(config.clip_config, image_size=config.image_size)
        return cls(visual, config)

    # -- properties of the contract ----------------------------------------------------------

    @property
    def descriptor_dim(self) -> int:
        return int(self.config.fc_output_dim)

    @property
    def metric(self) -> str:
        """How descriptors are compared: ``"cosine"`` or ``"l2"`` (see the module docstring)."""
        return str(self.config.metric)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.config.preprocess

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- computation ---------------------------------------------------------------------------

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """ResNet only: the last conv feature map (B x C x h x w)."""
        if self.family != "resnet":
            raise ConfigError(f"feature_map is defined for ResNet backbones; {self.config.arch} is {self.family}")
        return backbones.resnet_feature_map(self.backbone, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized float images (B x 3 x H x W) -> descriptors (B x D); differentiable."""
        if self.family == "resnet":
            return self.aggregation(backbones.resnet_feature_map(self.backbone, images))
        if tuple(images.shape[-2:]) != self.image_size:
            raise ConfigError(f"{self.config.arch} model expects {self.image_size[0]}x{self.image_size[1]} images "
                              f"(see model.preprocess_config), got {images.shape[-2]}x{images.shape[-1]}")
        return self.aggregation(self.backbone(images))

    def describe(self, images, device: str | torch.device | None = None, *, batch_size: int | None = None,
                 normalized: bool | None = None, amp: bool = True, channels_last: bool | None = None) -> np.ndarray:
        """Descriptors of a batch of images as a float32 numpy array (B x D), computed in eval mode;
        the model's mode, device and memory layout are left as they were.

        ``images``: a tensor or array, B x 3 x H x W or B x H x W x 3 (a single image may omit B).
        uint8 images (0..255) are scaled and normalized with ``preprocess_config`` on the device;
        float images are taken as already normalized unless ``normalized=False`` (then in 0..1).
        ``device``: where to compute (None: where the model is; another device moves the model
        there and back for this call: for many batches use :func:`progeo.describe` or
        :meth:`inference`). Mixed precision where the device supports it (``amp``); channels-last
        memory layout if ``channels_last`` (None: for ResNets on devices where convolutions prefer it).
        """
        with self.inference(device, channels_last) as dev:
            return run_batched(self, images, self.preprocess_config, dev, self.descriptor_dim, batch_size=batch_size,
                               normalized=normalized, amp=amp, channels_last=self._channels_last(dev, channels_last))

    def inference(self, device: str | torch.device | None = None, channels_last: bool | None = None):
        """A context manager: the model in eval mode on ``device`` (None: where it is) in the memory
        layout ``describe`` uses there, for a block of ``describe`` calls; restored after the block."""
        dev = resolve_device(device) if device is not None else self.device
        return evaluating(self, dev, self._channels_last(dev, channels_last))

    def _channels_last(self, dev: torch.device, channels_last: bool | None) -> bool:
        return (self.family == "resnet" and prefers_channels_last(dev)) if channels_last is None else channels_last

    # -- training helpers ----------------------------------------------------------------------

    def freeze(self, *, freeze_cnn: int = 2, freeze_trans: int = 6, train_all_layers: bool = False,
               freeze_embeddings: bool = True) -> list[str]:
        """Freeze the first backbone layers (SPEC 1.5); returns the names of the trainable parameters."""
        freeze_visual(self.backbone, freeze_cnn=freeze_cnn, freeze_trans=freeze_trans,
                                train_all_layers=train_all_layers, freeze_embeddings=freeze_embeddings)
        for p in self.aggregation.parameters():
            p.requires_grad = True
        return self.trainable_parameter_names()

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]


def build_model(backbone: str, *, fc_output_dim: int | None = None, image_size=None, normalize: bool = False,
                normalization: str = "clip", metric: str | None = None, weights=None, quick_gelu: bool | None = None, cache_dir=None, offline: bool | None = None,
                device: str | torch.device = "cpu") -> GeoLocalizer:
    """A new descriptor model on a CLIP backbone (``RN50:openai``, ``ViT-B/16:openai``, ``tiny-rn``...)."""
    clip = backbones.load_clip(backbone, weights=weights, quick_gelu=quick_gelu, cache_dir=cache_dir, offline=offline)
    model = GeoLocalizer.from_clip(clip, fc_output_dim=fc_output_dim, image_size=image_size, normalize=normalize,
                                   normalization=normalization, metric=metric)
    return model.to(resolve_device(device))
