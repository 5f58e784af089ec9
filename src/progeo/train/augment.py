"""Training augmentations applied to whole batches on the device, with per-image parameters.

Stage 2 (SPEC 1.5) augments each image with a colour jitter (brightness, contrast, saturation
0.7, hue 0.5, torchvision's ``ColorJitter`` semantics) and a random resized crop (scale 0.5-1,
aspect ratio 3/4-4/3, as ``RandomResizedCrop``) to the training size, then normalises with a
mean/std. Here the per-image parameters are drawn for the whole batch at once from a
``torch.Generator`` (on the CPU, so a seed gives the same crops on every device) and applied as
tensor operations on the device: the crop-and-resize of all images is one ``grid_sample``
(bilinear) with a per-image affine grid, the jitter is a few broadcast operations and one
vectorised RGB->HSV->RGB round trip for the hue. Unlike torchvision, which picks a random
order of the four jitter operations per call, the order here is fixed: brightness, contrast,
saturation, hue; and the crop comes first (so the jitter works on the smaller image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    out_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop: bool = True


def sample_params(cfg: AugmentConfig, n: int, in_size: tuple[int, int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image parameters for ``n`` images of ``in_size`` (h, w): crop boxes and jitter factors."""
    h, w = in_size
    g = generator

    def uniform(lo: float, hi: float, shape=(n,)) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    params: dict[str, torch.Tensor] = {}
    if cfg.crop:
        tries = 10  # like torchvision: 10 attempts, then the whole image
        area = uniform(*cfg.crop_scale, shape=(n, tries)) * (h * w)
        log_ratio = uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), shape=(n, tries))
        ratio = torch.exp(log_ratio)
        cw = torch.sqrt(area * ratio).round()
        ch = torch.sqrt(area / ratio).round()
        ok = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
        idx = first.clamp_min(0).unsqueeze(1)
        cw = torch.where(first >= 0, cw.gather(1, idx).squeeze(1), torch.full((n,), float(w)))
        ch = torch.where(first >= 0, ch.gather(1, idx).squeeze(1), torch.full((n,), float(h)))
        x0 = torch.floor(torch.rand(n, generator=g) * (w - cw + 1))
        y0 = torch.floor(torch.rand(n, generator=g) * (h - ch + 1))
        params["box"] = torch.stack([x0, y0, cw, ch], 1)
    for name in ("brightness", "contrast", "saturation"):
        amount = getattr(cfg, name)
        if amount > 0:
            params[name] = uniform(max(0.0, 1 - amount), 1 + amount)
    if cfg.hue > 0:
        params["hue"] = uniform(-cfg.hue, cfg.hue)
    return params


def slice_params(params: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    return {k: v[part] for k, v in params.items()}


def crop_resize(images: torch.Tensor, box: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Crop ``box`` (x0, y0, w, h in pixels, per image) out of float images and resize (bilinear)."""
    b, _, h, w = images.shape
    box = box.to(images.device, images.dtype)
    x0, y0, cw, ch = (v.view(b, 1, 1) for v in box.unbind(1))
    oh, ow = out_size
    # output pixel centres in [-1, 1] (align_corners=False), mapped into the box: an axis-aligned affine grid
    xs = ((torch.arange(ow, device=images.device, dtype=images.dtype) + 0.5) / ow).view(1, 1, ow)
    ys = ((torch.arange(oh, device=images.device, dtype=images.dtype) + 0.5) / oh).view(1, oh, 1)
    gx = (2 * (x0 + xs * cw) / w - 1).expand(b, oh, ow)
    gy = (2 * (y0 + ys * ch) / h - 1).expand(b, oh, ow)
    return F.grid_sample(images, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _frac(x: torch.Tensor) -> torch.Tensor:
    return x - torch.floor(x)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """torchvision's RGB->HSV (hue in [0, 1)) with elementwise operations only (fast on CPU)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = torch.maximum(r, torch.maximum(g, b))
    minc = torch.minimum(r, torch.minimum(g, b))
    delta = maxc - minc
    s = delta / maxc.clamp_min(1e-8)
    d = delta.clamp_min(1e-8)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r = (maxc == r).to(x.dtype)  # torchvision's priority: red, then green, then blue
    is_g = (maxc == g).to(x.dtype) * (1 - is_r)
    is_b = 1 - is_r - is_g
    hue = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    hue = _frac(hue / 6.0) * (delta > 0).to(x.dtype)
    return torch.cat([hue, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Closed form: channel ``c = v - v s clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 h) mod 6``, n = 5, 3, 1."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = 6.0 * _frac((n + 6.0 * h) / 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def color_jitter(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (in that order) on float images in [0, 1]."""
    if "brightness" in params:
        x = (x * _per_image(params["brightness"], x)).clamp(0, 1)
    if "contrast" in params:
        c = _per_image(params["contrast"], x)
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (c * x + (1 - c) * mean).clamp(0, 1)
    if "saturation" in params:
        s = _per_image(params["saturation"], x)
        x = (s * x + (1 - s) * _gray(x)).clamp(0, 1)
    if "hue" in params:
        hsv = rgb_to_hsv(x)
        shifted = _frac(hsv[:, 0] + params["hue"].to(x.device, x.dtype).view(-1, 1, 1))
        x = hsv_to_rgb(torch.stack([shifted, hsv[:, 1], hsv[:, 2]], 1))
    return x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """uint8 (or [0, 1] float) images B x 3 x H x W -> augmented, normalised float B x 3 x out."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    params = params or {}
    if "box" in params:
        x = crop_resize(x, params["box"], cfg.out_size)
    elif tuple(x.shape[-2:]) != tuple(cfg.out_size):
        x = F.interpolate(x, size=cfg.out_size, mode="bilinear", align_corners=False, antialias=True)
    x = color_jitter(x, params)
    return normalize(x, cfg.mean, cfg.std)


class BatchAugment:
    """``aug(images, generator)``: sample parameters for the batch and apply them (see module doc)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 part: slice | None = None, total: int | None = None) -> torch.Tensor:
        """Augment ``images``; with ``part``/``total``, parameters are drawn for a global batch of
        ``total`` images and ``part`` of them applied (each process of a distributed run)."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        n = total if total is not None else images.shape[0]
        params = sample_params(self.cfg, n, tuple(images.shape[-2:]), generator)
        if part is not None:
            params = slice_params(params, part)
        return augment_batch(images, self.cfg, params)
