"""Class text features of zero-shot GEM: encode each class's texts, prompt-ensemble them, cache the result.

:func:`encode_class_texts` gives one unit vector per class: the CLIP text features of the
class's texts (one per template), each L2-normalized, averaged, renormalized
(:func:`ensemble_text_features`). For a gazetteer of thousands of cities times several
templates that is most of a zero-shot run on CPU, so :func:`cached_class_text_features` keeps
the (classes x dim) float32 result on disk, in the feature cache folder (``--cache-dir``,
default ``$PROGEO_CACHE_DIR/features`` or ``~/.cache/progeo/features``) as
``text-<arch>-<key>.npy`` with its description ``.json`` beside it. The key hashes

- the text side of the weights (every tensor of the CLIP model but the image tower's) and the
  architecture (which fixes the tokenizer and context length),
- the exact texts of every class in order (so the templates, the place names and their
  countries), and the ensembling rule and cache format version,

so another model, template or candidate list computes a new file. The array is written
atomically with a SHA-1 of its bytes; a truncated or altered file is recomputed with a warning
(:func:`progeo.cache.read_cached_npy`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from progeo.errors import ConfigError

log = logging.getLogger(__name__)

TEXT_CACHE_VERSION = 1
ENSEMBLE = "l2-normalize, mean, l2-normalize"


def ensemble_text_features(text_features: np.ndarray) -> np.ndarray:
    """Prompt ensembling: (C, T, D) text features -> (C, D) unit vectors (normalize, average, renormalize)."""
    t = np.asarray(text_features, dtype=np.float32)
    if t.ndim != 3:
        raise ValueError(f"text features must be (classes, templates, dim), got shape {t.shape}")
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    mean = t.mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def _texts_per_class(texts_per_class: Sequence[Sequence[str]]) -> int:
    counts = {len(t) for t in texts_per_class}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"every class needs the same, non-zero number of texts; got counts {sorted(counts)}")
    return counts.pop()


def encode_class_texts(clip, texts_per_class: Sequence[Sequence[str]], device: str = "cpu",
                       batch_size: int = 256) -> np.ndarray:
    """Ensembled text feature (C, D) of each class from its texts (the same number per class)."""
    from progeo.models.inference import encode_texts

    per_class = _texts_per_class(texts_per_class)
    flat = [text for texts in texts_per_class for text in texts]
    feats = encode_texts(clip, flat, device, batch_size=batch_size, normalize=False)
    return ensemble_text_features(feats.reshape(len(texts_per_class), per_class, -1))


@dataclass
class ClassTextFeatures:
    """Ensembled class text features and where they were cached."""

    features: np.ndarray  # (C, D) float32 unit vectors
    file: Path | None = None  # the cache file (None: not cached)
    hit: bool = False  # True when the cache file was reused


def text_cache_key(clip, texts_per_class: Sequence[Sequence[str]]) -> dict:
    """What the cached class text features depend on (see the module docstring)."""
    from progeo.cache import texts_fingerprint, weights_fingerprint

    return {"version": TEXT_CACHE_VERSION, "arch": clip.arch,
            "text_weights": weights_fingerprint(clip.model, skip_prefixes=("visual.",)),
            "context_length": clip.model_cfg.get("text_cfg", {}).get("context_length"),
            "texts": texts_fingerprint(texts_per_class), "classes": len(texts_per_class),
            "texts_per_class": _texts_per_class(texts_per_class), "ensemble": ENSEMBLE, "dtype": "float32"}


def cached_class_text_features(clip, texts_per_class: Sequence[Sequence[str]], *, cache_dir: str | os.PathLike | None = None,
                               cache: bool = True, device: str = "cpu", batch_size: int = 256) -> ClassTextFeatures:
    """:func:`encode_class_texts` through the on-disk cache (``cache=False``: computed, nothing read or written)."""
    from progeo.cache import cache_key, default_feature_cache_dir, read_cached_npy, write_cached_npy

    if not cache:
        return ClassTextFeatures(encode_class_texts(clip, texts_per_class, device, batch_size))
    key_data = text_cache_key(clip, texts_per_class)
    folder = Path(cache_dir) if cache_dir is not None else default_feature_cache_dir()
    file = folder / f"text-{clip.arch}-{cache_key(key_data)}.npy"
    feats = read_cached_npy(file, key_data, len(texts_per_class), np.float32, what="text feature cache")
    if feats is not None:
        return ClassTextFeatures(feats, file, True)
    feats = encode_class_texts(clip, texts_per_class, device, batch_size)
    write_cached_npy(file, key_data, feats)
    log.info("cached %d class text features in %s", len(feats), file)
    return ClassTextFeatures(feats, file, False)
