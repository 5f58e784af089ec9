"""The stage-1 feature cache: frozen CLIP image features of a list of images, on disk.

Stage 1 (SPEC 1.4) trains prompts against image features of a frozen encoder, so the features
of every image of the used groups are computed once and kept in a memory-mapped float16
``.npy`` file (``N x D``, row i = image i of the list) with a JSON description beside it. The
file name is a key over

- a fingerprint of the image tower's weights (SHA-1 of its tensors),
- the image list (SHA-1 of the paths, in order),
- the preprocessing (image size, mean, std, resize mode) and the cache format version,

so the same model and data reuse the file, and any change (other weights, an image added,
renamed or removed, another size) computes a new one. Files are written atomically: an
interrupted extraction leaves no file that could be mistaken for a complete one (the shared
key and validation helpers are in :mod:`progeo.cache`).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from progeo.cache import (cache_key, default_feature_cache_dir, paths_fingerprint, read_cached_npy,
                          weights_fingerprint, write_cache_meta)
from progeo.device import autocast
from progeo.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def encoder_at_size(clip, image_size: int | None) -> tuple[torch.nn.Module, tuple[int, int]]:
    """CLIP's image tower at ``image_size`` (a resized copy when it differs from the native size)."""
    from progeo.models.backbones import image_size_of, set_image_size

    native = image_size_of(clip.visual)
    size = native if image_size is None else (int(image_size), int(image_size))
    if size == native:
        return clip.visual, size
    visual = copy.deepcopy(clip.visual)
    set_image_size(visual, size, resize_attnpool=True)
    return visual, size


def cached_image_features(
    clip,
    paths: Sequence[str],
    *,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    skip_hint: bool = False,
) -> tuple[np.ndarray, Path, bool]:
    """Features (N x D float16, memory-mapped) of ``paths`` under ``clip``'s frozen image tower.

    Returns ``(features, file, hit)``; ``hit`` is True when the cache file was reused.
    ``skip_hint``: an undecodable image's error suggests ``--on-bad-image skip`` (commands that have it).
    """
    visual, size = encoder_at_size(clip, image_size)
    pre = clip.preprocess
    key_data = {"version": CACHE_VERSION, "arch": clip.arch, "weights": weights_fingerprint(visual),
                "images": paths_fingerprint(paths), "images_num": len(paths), "image_size": list(size),
                "mean": list(pre.mean), "std": list(pre.std), "resize_mode": "center-crop"}
    key = cache_key(key_data)
    folder = Path(cache_dir) if cache_dir is not None else default_feature_cache_dir()
    file = folder / f"{clip.arch}-{key}.npy"
    feats = read_cached_npy(file, key_data, len(paths), np.float16, mmap=True, what="feature cache")
    if feats is not None:
        return feats, file, True
    feats = _extract(visual, pre, size, paths, file, batch_size, torch.device(device), num_workers, amp, progress,
                     skip_hint)
    write_cache_meta(file, key_data, feats)
    return feats, file, False


def _extract(visual, pre, size, paths, file: Path, batch_size: int, device: torch.device, num_workers: int,
             amp: bool, progress: bool, skip_hint: bool) -> np.ndarray:
    from progeo.data.images import iter_image_batches

    visual = visual.to(device).eval()
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    dim = None
    batches = iter_image_batches(paths, size, batch_size=batch_size, num_workers=num_workers,
                                 resize_mode="center-crop", device=device, skip_hint=skip_hint)
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp:
        out = None
        bar = tqdm(batches, desc="image features (stage 1)", unit="batch", disable=not progress)
        with torch.inference_mode():
            for images, indices in bar:
                x = (images.to(device).float() / 255.0 - mean) / std
                with autocast(device, enabled=amp):
                    f = visual(x).float().cpu().numpy()
                if out is None:
                    dim = f.shape[1]
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(paths), dim))
                out[indices.numpy()] = f.astype(np.float16)
        if out is None:
            with open(tmp, "wb") as f:
                np.save(f, np.zeros((0, 0), dtype=np.float16))
        else:
            out.flush()
            del out
    log.info("cached %d image features (%s-d) in %s", len(paths), dim, file)
    return np.load(file, mmap_mode="r")
