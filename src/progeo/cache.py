"""On-disk feature caches: keys, fingerprints and the validated read of a cached ``.npy`` file.

A cache file ``NAME-<key>.npy`` holds an array; beside it ``NAME-<key>.json`` holds its
description ``{"key": key_data, "shape", "dtype"[, "sha1"]}``. The key is a hash of
``key_data`` (model weights fingerprint, inputs, preprocessing, format version), so another
model or input computes another file. The array is written atomically
(:func:`progeo.io.atomic_path`) before its description, so a half-written cache is never taken
for a complete one; a file that does not load, has the wrong shape or dtype, or (when a
checksum was recorded) whose bytes changed is reported with a warning and recomputed, never used.

Used by the stage-1 image feature cache (:mod:`progeo.train.features`, shared with GEM) and the
class text feature cache of zero-shot GEM (:mod:`progeo.geo.text_features`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progeo.errors import is_read_error, short_reason
from progeo.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


def default_feature_cache_dir() -> Path:
    """``$PROGEO_CACHE_DIR/features`` or ``~/.cache/progeo/features``."""
    from progeo.data.groups import default_cache_dir

    return default_cache_dir() / "features"


def cache_key(key_data: dict[str, Any]) -> str:
    """A 24-hex-digit key of a JSON-able description (order of dict entries does not matter)."""
    return hashlib.sha1(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]


def weights_fingerprint(module, skip_prefixes: Sequence[str] = ()) -> str:
    """SHA-1 of a module's tensors (names, shapes, dtypes and values), in name order.

    Tensors whose names start with one of ``skip_prefixes`` are left out (e.g. ``("visual.",)``
    fingerprints a CLIP model's text side only).
    """
    import torch

    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def paths_fingerprint(paths: Sequence[str]) -> str:
    """SHA-1 of a list of file paths (absolute, in order)."""
    h = hashlib.sha1()
    for p in paths:
        h.update(os.fsencode(os.path.abspath(p)))
        h.update(b"\n")
    return h.hexdigest()


def texts_fingerprint(texts: Sequence[Sequence[str]]) -> str:
    """SHA-1 of a list of lists of strings (exact texts and their grouping)."""
    return hashlib.sha1(json.dumps([list(t) for t in texts], ensure_ascii=False).encode("utf-8")).hexdigest()


def array_sha1(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data).hexdigest()


def read_cached_npy(file: Path, key_data: dict[str, Any], rows: int, dtype, *, mmap: bool = False,
                    what: str = "feature cache") -> np.ndarray | None:
    """The cached array of ``file`` when it and its description match ``key_data``, ``rows`` and ``dtype``.

    ``None`` when there is no cache yet, or (with a warning naming the file) when it is
    unreadable, truncated, of another shape or dtype, or its bytes differ from the recorded SHA-1.
    """
    meta_file = file.with_suffix(".json")
    if not (file.exists() and meta_file.exists()):
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        if (meta.get("key") != key_data or array.shape[0] != rows or array.dtype != np.dtype(dtype)
                or list(array.shape) != list(meta.get("shape", array.shape))):
            log.warning("%s %s does not match its description; recomputing it", what, file)
            return None
        if "sha1" in meta and array_sha1(array) != meta["sha1"]:
            log.warning("%s %s is corrupt (its checksum changed); recomputing it", what, file)
            return None
    except Exception as exc:
        if not is_read_error(exc):
            raise
        log.warning("%s %s is unreadable (%s); recomputing it", what, file, short_reason(exc))
        return None
    log.info("reusing cached %s %s (%s)", what, file, " x ".join(map(str, array.shape)))
    return array


def write_cache_meta(file: Path, key_data: dict[str, Any], array: np.ndarray, checksum: bool = False) -> None:
    """Write the description of the (already written) cache ``file`` of ``array``."""
    meta: dict[str, Any] = {"key": key_data, "shape": list(array.shape), "dtype": str(array.dtype)}
    if checksum:
        meta["sha1"] = array_sha1(array)
    write_json_atomic(file.with_suffix(".json"), meta)


def write_cached_npy(file: Path, key_data: dict[str, Any], array: np.ndarray) -> None:
    """Write ``array`` to ``file`` atomically, then its description with a checksum (small arrays)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    write_cache_meta(file, key_data, array, checksum=True)
