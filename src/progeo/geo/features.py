"""The model GEM runs on and the frozen image features of an image list, cached on disk.

- :func:`load_gem_model`: ``--model`` as an open_clip name with tag (``ViT-B-32:openai``, which
  fails offline with the models' own clear error) or a backbone plus a local ``weights`` file
  (e.g. a ``progeo pretrain`` checkpoint); the result carries a :class:`ModelSpec` that probes
  save, so that a probe is never applied to another model's features.
- :func:`image_features`: the CLIP image embeddings of a list of images through the stage-1
  feature cache (:func:`progeo.train.features.cached_image_features`: float16 ``.npy`` memmap,
  written atomically, keyed by the image tower's weights hash, the image list and the
  preprocessing), so that zero-shot, probe fitting and probe evaluation of the same images
  compute them once. Returned L2-normalized in float32.

Bad images follow the evaluation policy (``on_bad_image``): ``"fail"`` raises
:class:`~progeo.errors.ImageDecodeError` naming the file; ``"skip"`` leaves them out and lists
them. The cache holds only complete lists, so with ``"skip"`` the undecodable images are found
by one decode-only pass when extraction first meets one, remembered beside the cache
(``bad-<list hash>.json``, keyed by each file's size and mtime) and left out of the list
whose features are cached: later runs reuse the cache without decoding anything again.
"""

from __future__ import annotations

import json
import logging
import os
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progeo.errors import ConfigError, DatasetError, ImageDecodeError

log = logging.getLogger(__name__)

_NORM_CHUNK = 65536


@dataclass(frozen=True)
class ModelSpec:
    """What a model was loaded from, and the fingerprint of its image tower."""

    model: str  # open_clip name[:tag] as given, e.g. "ViT-B-32:openai" or "tiny-vit"
    weights: str | None  # local weights file, absolute path
    arch: str
    embed_dim: int
    visual_sha1: str  # SHA-1 of the image tower's tensors (progeo.cache.weights_fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "weights": self.weights, "arch": self.arch, "embed_dim": self.embed_dim,
                "visual_sha1": self.visual_sha1}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "probe") -> ModelSpec:
        try:
            return cls(str(d["model"]), d.get("weights"), str(d["arch"]), int(d["embed_dim"]), str(d["visual_sha1"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: the model description {d!r} is malformed ({exc}); refit the probe") from exc

    def describe(self) -> str:
        return f"{self.model}" + (f" with weights {self.weights}" if self.weights else "")


@dataclass
class GemModel:
    """A loaded CLIP model with its :class:`ModelSpec`."""

    clip: Any  # progeo.models.backbones.ClipModel
    spec: ModelSpec


def load_gem_model(model: str, weights: str | os.PathLike | None = None, device: str = "cpu") -> GemModel:
    """Load ``model`` (``ARCH[:TAG]``) with optional local ``weights`` on ``device``."""
    from progeo.models.backbones import load_clip
    from progeo.cache import weights_fingerprint

    if not model or not model.strip():
        raise ConfigError("no model given: pass --model ARCH[:TAG], e.g. ViT-B-32:openai, or tiny-vit --weights FILE")
    weights_path = None
    if weights is not None:
        weights_path = Path(weights)
        if not weights_path.is_file():
            raise ConfigError(f"weights file {weights_path} not found; pass the checkpoint written by "
                              f"`progeo pretrain` (RUN/clip.safetensors) or another local CLIP weights file")
        weights_path = weights_path.resolve()
    clip = load_clip(model, weights=weights_path, device=device)
    spec = ModelSpec(model.strip(), str(weights_path) if weights_path else None, clip.arch, clip.embed_dim,
                     weights_fingerprint(clip.visual))
    log.info("GEM model %s (%s, %d-d embeddings)", spec.describe(), clip.source, clip.embed_dim)
    return GemModel(clip, spec)


@dataclass
class ImageFeatures:
    """L2-normalized features of the kept images, in input order."""

    features: np.ndarray  # (M x D) float32
    kept: np.ndarray  # (M,) int64: positions in the input list of the rows of ``features``
    skipped: list[str] = field(default_factory=list)  # images left out (on_bad_image="skip")
    file: Path | None = None  # the cache file
    hit: bool = False  # True when the cache file was reused


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (any float dtype, memmaps too) scaled to unit length, as float32, in chunks."""
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, x.shape[0], _NORM_CHUNK):
        block = np.asarray(x[s : s + _NORM_CHUNK], dtype=np.float32)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + _NORM_CHUNK] = block / np.maximum(norm, 1e-12)
    return out


def image_features(
    clip,
    paths: Sequence[str | os.PathLike],
    *,
    on_bad_image: str = "fail",
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> ImageFeatures:
    """Cached, L2-normalized CLIP image features of ``paths`` (see the module docstring)."""
    from progeo.data.images import BAD_IMAGE_POLICIES
    from progeo.device import resolve_device
    from progeo.cache import default_feature_cache_dir
    from progeo.train.features import cached_image_features

    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image={on_bad_image!r} is not valid: choose one of {', '.join(BAD_IMAGE_POLICIES)}")
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DatasetError("no images to compute features of: the image list is empty")
    dev = resolve_device(device)
    folder = Path(cache_dir) if cache_dir is not None else default_feature_cache_dir()
    bad = _remembered_bad(paths, folder) if on_bad_image == "skip" else []

    def extract(bad_indices: list[int]):
        keep = np.setdiff1d(np.arange(len(paths)), np.asarray(bad_indices, dtype=np.int64))
        if keep.size == 0:
            raise DatasetError(f"none of the {len(paths)} images could be decoded (e.g. {paths[0]}); check the files")
        feats, file, hit = cached_image_features(
            clip, [paths[i] for i in keep], image_size=image_size, cache_dir=folder, batch_size=batch_size,
            device=dev, num_workers=num_workers, progress=progress, skip_hint=True)
        return ImageFeatures(l2_normalize(feats), keep, [paths[i] for i in bad_indices], file, hit)

    try:
        return extract(bad)
    except ImageDecodeError:
        if on_bad_image == "fail":
            raise
    bad = _scan_bad(clip, paths, image_size, batch_size, num_workers)
    _remember_bad(paths, bad, folder)
    log.warning("leaving out %d undecodable image(s) of %d (on_bad_image=skip), e.g. %s",
                len(bad), len(paths), paths[bad[0]] if bad else "-")
    return extract(bad)


# -- remembered bad images -----------------------------------------------------------------------


def _bad_file(paths: list[str], folder: Path) -> Path:
    from progeo.cache import paths_fingerprint

    return folder / f"bad-{paths_fingerprint(paths)[:24]}.json"


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _remembered_bad(paths: list[str], folder: Path) -> list[int]:
    """Indices recorded as undecodable whose files are unchanged since (a changed file is retried)."""
    file = _bad_file(paths, folder)
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))["bad"]
        return [int(e["index"]) for e in entries if paths[int(e["index"])] == e["path"] and _stat(e["path"]) == e["stat"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return []


def _remember_bad(paths: list[str], bad: list[int], folder: Path) -> None:
    from progeo.io import write_json_atomic

    write_json_atomic(_bad_file(paths, folder),
                      {"bad": [{"index": i, "path": paths[i], "stat": _stat(paths[i])} for i in bad]})


def _scan_bad(clip, paths: list[str], image_size: int | None, batch_size: int, num_workers: int) -> list[int]:
    """Indices of the images that do not decode (one decode-only pass, no model)."""
    from progeo.data.images import iter_image_batches
    from progeo.models.backbones import image_size_of

    size = image_size_of(clip.visual) if image_size is None else (int(image_size), int(image_size))
    batches = iter_image_batches(paths, size, batch_size=batch_size, num_workers=num_workers, on_bad_image="skip",
                                 resize_mode="center-crop")
    for _ in batches:
        pass
    return sorted(batches.skipped_indices)


@dataclass
class FeatureOptions:
    """How the frozen image features of a GEM run are computed (zero-shot, probe fit and eval)."""

    device: str = "cpu"  # the commands default to "auto"; see :meth:`resolved`
    batch_size: int = 128
    num_workers: int = 0
    on_bad_image: str = "fail"
    cache_dir: str | None = None  # image and text feature cache (default: ~/.cache/progeo/features)
    progress: bool = True

    def resolved(self):
        """A copy whose ``device`` names the device ``auto`` picks."""
        from progeo.device import resolve_device

        return dataclasses.replace(self, device=str(resolve_device(self.device)))

    def features(self, gem: GemModel, paths: Sequence) -> ImageFeatures:
        return image_features(gem.clip, paths, on_bad_image=self.on_bad_image, cache_dir=self.cache_dir,
                              batch_size=self.batch_size, device=self.device, num_workers=self.num_workers,
                              progress=self.progress)
