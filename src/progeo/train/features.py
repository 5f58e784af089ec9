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
interrupted extraction leaves no file that could be mistaken for a complete one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from progeo.device import autocast
from progeo.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-1 of a module's tensors (names, shapes, dtypes and values), in name order."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def paths_fingerprint(paths: Sequence[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        h.update(os.fsencode(os.path.abspath(p)))
        h.update(b"\n")
    return h.hexdigest()


def default_feature_cache_dir() -> Path:
    from progeo.data.groups import default_cache_dir

    return default_cache_dir() / "features"


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
) -> tuple[np.ndarray, Path, bool]:
    """Features (N x D float16, memory-mapped) of ``paths`` under ``clip``'s frozen image tower.

    Returns ``(features, file, hit)``; ``hit`` is True when the cache file was reused.
    """
    visual, size = encoder_at_size(clip, image_size)
    pre = clip.preprocess
    key_data = {"version": CACHE_VERSION, "arch": clip.arch, "weights": weights_fingerprint(visual),
                "images": paths_fingerprint(paths), "images_num": len(paths), "image_size": list(size),
                "mean": list(pre.mean), "std": list(pre.std), "resize_mode": "center-crop"}
    key = hashlib.sha1(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_feature_cache_dir()
    file = folder / f"{clip.arch}-{key}.npy"
    meta_file = file.with_suffix(".json")
    if file.exists() and meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            feats = np.load(file, mmap_mode="r")
            if meta.get("key") == key_data and feats.shape[0] == len(paths) and feats.dtype == np.float16:
                log.info("reusing cached features %s (%d x %d)", file, *feats.shape)
                return feats, file, True
            log.warning("feature cache %s does not match its description; recomputing it", file)
        except (OSError, ValueError) as exc:
            log.warning("feature cache %s is unreadable (%s); recomputing it", file, exc)
    feats = _extract(visual, pre, size, paths, file, batch_size, torch.device(device), num_workers, amp, progress)
    write_json_atomic(meta_file, {"key": key_data, "shape": list(feats.shape), "dtype": "float16"})
    return feats, file, False


def _extract(visual, pre, size, paths, file: Path, batch_size: int, device: torch.device, num_workers: int,
             amp: bool, progress: bool) -> np.ndarray:
    from progeo.data.images import iter_image_batches

    visual = visual.to(device).eval()
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    dim = None
    batches = iter_image_batches(paths, size, batch_size=batch_size, num_workers=num_workers,
                                 resize_mode="center-crop", device=device)
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
