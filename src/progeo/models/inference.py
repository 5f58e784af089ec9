"""Batched, device-agnostic inference: image batches in, float32 numpy arrays out.

Shared by :meth:`GeoLocalizer.describe` and by the CLIP embedding helpers used for stage-1
feature caching and GEM zero-shot / linear-probe features (:func:`encode_images`,
:func:`encode_texts`). Images may be uint8 (normalized on the device with the model's mean/std:
4x less to transfer) or float (already normalized unless ``normalized=False``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from progeo.device import autocast, prefers_channels_last, resolve_device
from progeo.errors import ConfigError


def as_nchw(images) -> torch.Tensor:
    """A tensor or array of images (B x 3 x H x W, B x H x W x 3, or one image) as B x 3 x H x W."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"expected a tensor or numpy array of images, got {type(images).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ConfigError(f"images must be B x 3 x H x W or B x H x W x 3, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ConfigError(f"images must have 3 channels (RGB), got shape {tuple(x.shape)}")
    return x


def prepare(module: nn.Module, device, channels_last: bool) -> torch.device:
    """Move ``module`` to ``device`` in the wanted memory layout, in eval mode (outside inference mode,
    so that its parameters do not become inference tensors)."""
    dev = resolve_device(device) if device is not None else next(module.parameters()).device
    module.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    module.eval()
    return dev


def _is_channels_last(module: nn.Module) -> bool:
    """Whether the first convolution's weight (3 x 3 or larger: its layout tells) is channels-last."""
    first = next((p for p in module.parameters() if p.dim() == 4), None)
    return first is not None and not first.is_contiguous()


@contextlib.contextmanager
def evaluating(module: nn.Module, device=None, channels_last: bool = False) -> Iterator[torch.device]:
    """``module`` in eval mode on ``device`` (None: where it is) in the wanted memory layout for the
    block; its mode, device and layout are restored after (moved only where they differ: nested
    blocks and a model already in place cost nothing)."""
    was_training, before = module.training, next(module.parameters()).device
    was_cl = _is_channels_last(module)
    dev = resolve_device(device) if device is not None else before
    moved = dev.type != before.type or dev.index not in (None, before.index) or bool(channels_last) != was_cl
    if moved:
        prepare(module, dev, channels_last)
    module.eval()
    try:
        yield before if not moved else dev
    finally:
        if moved:
            module.to(before, memory_format=torch.channels_last if was_cl else torch.contiguous_format)
        module.train(was_training)


def run_batched(fn: Callable[[torch.Tensor], torch.Tensor], images, preprocess, device: torch.device, out_dim: int, *,
                batch_size: int | None = None, normalized: bool | None = None, amp: bool = True,
                channels_last: bool = False) -> np.ndarray:
    """Apply ``fn`` to normalized float chunks of ``images`` under inference mode and autocast."""
    batch = as_nchw(images)
    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    step = batch_size or max(1, batch.shape[0])
    out = []
    with torch.inference_mode():
        for start in range(0, batch.shape[0], step):
            x = batch[start:start + step].to(device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = (x.float() / 255.0 - mean) / std
            elif normalized is False:
                x = (x.float() - mean) / std
            else:
                x = x.float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, enabled=amp):
                out.append(fn(x).float().cpu())
    if not out:
        return np.zeros((0, out_dim), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def encode_images(clip, images, device=None, *, batch_size: int | None = None, normalized: bool | None = None,
                  normalize: bool = False, amp: bool = True, channels_last: bool | None = None) -> np.ndarray:
    """CLIP image embeddings (B x embed_dim) of a :class:`~progeo.models.backbones.ClipModel`.

    Images must have ``clip.preprocess.image_size``. ``normalize`` L2-normalizes the output
    (zero-shot GEM); stage 1 of ProGEO uses the raw embedding (the default).
    """
    size = tuple(clip.preprocess.image_size)
    batch = as_nchw(images)
    if tuple(batch.shape[-2:]) != size:
        raise ConfigError(f"{clip.arch} CLIP embeddings need {size[0]}x{size[1]} images (clip.preprocess), "
                          f"got {batch.shape[-2]}x{batch.shape[-1]}")
    dev = resolve_device(device) if device is not None else next(clip.model.visual.parameters()).device
    use_cl = (clip.family == "resnet" and prefers_channels_last(dev)) if channels_last is None else channels_last
    prepare(clip.model.visual, dev, use_cl)

    def fn(x):
        feats = clip.model.visual(x)
        return F.normalize(feats, dim=-1) if normalize else feats

    return run_batched(fn, batch, clip.preprocess, dev, clip.embed_dim, batch_size=batch_size,
                       normalized=normalized, amp=amp, channels_last=use_cl)


def encode_texts(clip, texts: Sequence[str], device=None, *, batch_size: int = 256, normalize: bool = False,
                 amp: bool = True) -> np.ndarray:
    """CLIP text embeddings (N x embed_dim) of strings, tokenized with open_clip's tokenizer."""
    tokenizer = clip.tokenizer()
    dev = prepare(clip.model, device, False)
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start:start + batch_size])).to(dev)
            with autocast(dev, enabled=amp):
                out.append(clip.model.encode_text(tokens, normalize=normalize).float().cpu())
    if not out:
        return np.zeros((0, clip.embed_dim), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def as_uint8_batch(images, image_size: tuple[int, int]):
    """Decoded images (PIL list, tensor or array) as a uint8 B x 3 x H x W tensor at ``image_size``."""
    from progeo.data.images import pil_to_uint8_tensor

    if isinstance(images, (list, tuple)):
        from PIL import Image

        if not images or not all(isinstance(i, Image.Image) for i in images):
            raise ConfigError("give photos as paths (files or folders), a list of PIL images, or a uint8 image batch")
        images = torch.stack([pil_to_uint8_tensor(i.convert("RGB").resize(image_size[::-1], Image.Resampling.BILINEAR))
                              for i in images])
    batch = as_nchw(images)
    if batch.dtype != torch.uint8:
        raise ConfigError(f"decoded images must be uint8 (0..255), got {batch.dtype}")
    if tuple(batch.shape[-2:]) != tuple(image_size):
        batch = F.interpolate(batch.float(), size=tuple(image_size), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return batch
