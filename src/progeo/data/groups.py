"""CosPlace classes and groups: the partition of a training set, built with numpy and cached.

Class of an image (integers)::

    (floor(east / M) * M, floor(north / M) * M, floor(heading / alpha) * alpha)

Group of a class: ``((E / M) mod N, (No / M) mod N, (H / alpha) mod L)`` on the rounded values,
so classes of one group are at least N*M metres or L*alpha degrees apart. Classes with fewer
than ``min_images_per_class`` images are dropped *before* grouping. ``floor`` is applied to the
float quotient, ``mod`` is the non-negative (Python) modulo, headings are used as written
(not wrapped to [0, 360)).

Order (deterministic, independent of the order of the image list): groups are sorted by
their group-id tuple; inside a group, classes are sorted by their class-id tuple; inside a
class, images by their index in the list. The published CosPlace / ProGEO code numbers them
otherwise: groups by the first image (in list order) of one of their kept classes, and the
classes inside a group in the iteration order of a Python ``set`` of class-id tuples filled in
list order. So "group 3, class 7" there may be another place than here; the partition itself
is the same. :mod:`progeo.data.authors_order` rebuilds their numbering (``progeo
import-prompts --train-set`` uses it to put the authors' prompts on progeo's labels).

Storage is CSR over numpy arrays: classes of group ``g`` are ``group_class_ptr[g]:
group_class_ptr[g+1]`` (contiguous, because classes are stored group by group), images of class
``c`` are ``image_indices[class_image_ptr[c]:class_image_ptr[c+1]]``. The result is cached as an
``.npz`` (no pickle) keyed by the folder, a SHA-1 of the image list and the parameters.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from progeo.config import GroupsConfig  # the partition's parameters, a section of the training configs
from progeo.io import atomic_path

logger = logging.getLogger(__name__)
CACHE_VERSION = 1
_ARRAYS = ("group_ids", "group_class_ptr", "class_ids", "class_image_ptr", "image_indices")


def default_cache_dir() -> Path:
    """``$PROGEO_CACHE_DIR`` or ``~/.cache/progeo``."""
    env = os.environ.get("PROGEO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "progeo"


@dataclass
class CosPlaceGroups:
    """The classes and groups of one image list (see the module docstring for the layout)."""

    config: GroupsConfig
    images_num: int  # images in the list, kept or not
    group_ids: np.ndarray  # (G, 3) int64
    group_class_ptr: np.ndarray  # (G + 1,) int64
    class_ids: np.ndarray  # (C, 3) int64: (east, north, heading), rounded
    class_image_ptr: np.ndarray  # (C + 1,) int64
    image_indices: np.ndarray  # (K,) int64, indices into the image list
    classes_before_filtering: int = 0

    @property
    def groups_num(self) -> int:
        return int(self.group_ids.shape[0])

    @property
    def classes_num(self) -> int:
        return int(self.class_ids.shape[0])

    @property
    def images_per_class(self) -> np.ndarray:
        return np.diff(self.class_image_ptr)

    def classes_of_group(self, g: int) -> np.ndarray:
        """Global indices of the classes of group ``g`` (label i of the group = element i)."""
        return np.arange(self.group_class_ptr[g], self.group_class_ptr[g + 1])

    def images_of_class(self, c: int) -> np.ndarray:
        return self.image_indices[self.class_image_ptr[c] : self.class_image_ptr[c + 1]]

    def images_of_group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """(image indices, label inside the group) of every image of group ``g``."""
        c0, c1 = int(self.group_class_ptr[g]), int(self.group_class_ptr[g + 1])
        ptr = self.class_image_ptr[c0 : c1 + 1]
        labels = np.repeat(np.arange(c1 - c0), np.diff(ptr))
        return self.image_indices[ptr[0] : ptr[-1]], labels


def _floor_index(values: np.ndarray, step: int) -> np.ndarray:
    q = np.divide(values, step, dtype=np.float64)
    return np.floor(q, out=q).astype(np.int64)


def build_groups(east: np.ndarray, north: np.ndarray, heading: np.ndarray,
                 config: GroupsConfig = GroupsConfig(), valid: np.ndarray | None = None) -> CosPlaceGroups:
    """Partition images (UTM east/north in metres, heading in degrees) into classes and groups.

    ``valid`` (bool per image) excludes images, e.g. ones with malformed names.
    """
    images_num = int(np.asarray(east).shape[0])
    idx = np.arange(images_num, dtype=np.int64) if valid is None else np.flatnonzero(valid)
    cells = [_floor_index(np.asarray(v)[idx], s) for v, s in
             ((east, config.M), (north, config.M), (heading, config.alpha))]
    lows = [int(c.min(initial=0)) for c in cells]
    spans = [int(c.max(initial=0)) - lo + 1 for c, lo in zip(cells, lows)]
    key = (cells[0] - lows[0]) * (spans[1] * spans[2]) + (cells[1] - lows[1]) * spans[2] + (cells[2] - lows[2])
    del cells
    n = idx.size
    if spans[0] * spans[1] * spans[2] * max(n, 1) < 2**62:
        # one fast sort of (class key, position): same order as a stable argsort of the keys
        packed = np.sort(key * n + np.arange(n, dtype=np.int64))
        pos, key_sorted = packed % max(n, 1), packed // max(n, 1)
        del packed
    else:  # huge coordinate ranges: fall back to a stable argsort
        pos = np.argsort(key, kind="stable")
        key_sorted = key[pos]
    del key
    order_img = idx[pos]
    new_class = np.empty(n, dtype=bool)
    new_class[:1] = True
    new_class[1:] = key_sorted[1:] != key_sorted[:-1]
    starts = np.flatnonzero(new_class)
    counts = np.diff(np.append(starts, n))
    class_keys = key_sorted[starts]
    kept = np.flatnonzero(counts >= config.min_images_per_class)
    k = class_keys[kept]
    cell = np.stack([k // (spans[1] * spans[2]) + lows[0], (k // spans[2]) % spans[1] + lows[1],
                     k % spans[2] + lows[2]], axis=1)
    gid = np.stack([np.mod(cell[:, 0], config.N), np.mod(cell[:, 1], config.N),
                    np.mod(cell[:, 2], config.L)], axis=1)
    gkey = (gid[:, 0] * config.N + gid[:, 1]) * config.L + gid[:, 2]
    order = np.argsort(gkey, kind="stable")  # classes are already in class-id order
    kept, cell, gkey = kept[order], cell[order], gkey[order]
    class_image_ptr = np.concatenate(([0], np.cumsum(counts[kept]))).astype(np.int64)
    rank = np.full(starts.size, -1, dtype=np.int64)
    rank[kept] = np.arange(kept.size)
    elem_class = np.cumsum(new_class) - 1
    elem_rank = rank[elem_class]
    sel = np.flatnonzero(elem_rank >= 0)
    dest = class_image_ptr[elem_rank[sel]] + (sel - starts[elem_class[sel]])
    image_indices = np.empty(sel.size, dtype=np.int64)
    image_indices[dest] = order_img[sel]
    first = np.flatnonzero(np.r_[True, gkey[1:] != gkey[:-1]]) if gkey.size else np.zeros(0, np.int64)
    g = gkey[first]
    group_ids = np.stack([g // (config.N * config.L), (g // config.L) % config.N, g % config.L], axis=1)
    mult = np.array([config.M, config.M, config.alpha], dtype=np.int64)
    return CosPlaceGroups(
        config=config, images_num=images_num, group_ids=group_ids.astype(np.int64).reshape(-1, 3),
        group_class_ptr=np.append(first, kept.size).astype(np.int64),
        class_ids=(cell * mult).astype(np.int64).reshape(-1, 3), class_image_ptr=class_image_ptr,
        image_indices=image_indices, classes_before_filtering=int(starts.size))


def cache_path(images, config: GroupsConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of the groups of ``images`` (an ImageList) under ``config``."""
    import hashlib

    ident = json.dumps({"version": CACHE_VERSION, "root": os.path.abspath(images.root),
                        "list_sha1": images.content_hash, "config": asdict(config)}, sort_keys=True)
    key = hashlib.sha1(ident.encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / "groups" / f"{Path(images.root).name or 'root'}-{key}.npz"


def _meta(images, config: GroupsConfig) -> dict:
    return {"version": CACHE_VERSION, "list_sha1": images.content_hash, "images_num": len(images),
            "config": asdict(config)}


def save_groups(groups: CosPlaceGroups, path: str | os.PathLike, meta: dict) -> None:
    meta = dict(meta, classes_before_filtering=groups.classes_before_filtering)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **{a: getattr(groups, a) for a in _ARRAYS})


def load_groups(path: str | os.PathLike, meta: dict) -> CosPlaceGroups:
    """Load a cache file; ``ValueError`` when it does not hold the groups described by ``meta``."""
    with np.load(path, allow_pickle=False) as z:
        stored = json.loads(str(z["meta"][()]))
        if any(stored.get(k) != v for k, v in meta.items()):
            raise ValueError("the cache was written for another image list or other parameters")
        arrays = {a: np.asarray(z[a]) for a in _ARRAYS}
    ptr_g, ptr_c, img = arrays["group_class_ptr"], arrays["class_image_ptr"], arrays["image_indices"]
    consistent = (ptr_g.size == arrays["group_ids"].shape[0] + 1 and ptr_c.size == arrays["class_ids"].shape[0] + 1
                  and ptr_g[-1] == ptr_c.size - 1 and ptr_c[-1] == img.size
                  and (img.size == 0 or (img.min() >= 0 and img.max() < meta["images_num"]))
                  and np.all(np.diff(ptr_g) >= 0) and np.all(np.diff(ptr_c) >= 0))
    if not consistent:
        raise ValueError("inconsistent arrays")
    return CosPlaceGroups(config=GroupsConfig(**stored["config"]), images_num=int(stored["images_num"]),
                          classes_before_filtering=int(stored.get("classes_before_filtering", 0)), **arrays)


def load_or_build_groups(images, config: GroupsConfig = GroupsConfig(), *,
                         cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> CosPlaceGroups:
    """Groups of ``images`` (an ImageList): from the cache when valid, else parsed and built.

    Names are parsed with heading and UTM required (a train set needs them). A corrupt or
    stale cache file is rebuilt with a warning; a cache that cannot be written is skipped.
    """
    from progeo.data.vg_names import parse_vg_names

    path = cache_path(images, config, cache_dir) if use_cache else None
    meta = _meta(images, config)
    if path is not None and path.exists():
        try:
            groups = load_groups(path, meta)
            logger.info("loaded %d groups, %d classes from cache %s", groups.groups_num, groups.classes_num, path)
            return groups
        except Exception as exc:  # any unreadable cache is rebuilt, never fatal
            logger.warning("groups cache %s is unusable (%s); rebuilding it", path, exc)
    parsed = parse_vg_names(images, fields=("utm_east", "utm_north", "heading"),
                            required=("utm_east", "utm_north", "heading"))
    groups = build_groups(parsed["utm_east"], parsed["utm_north"], parsed["heading"], config)
    del parsed
    logger.info("built %d groups, %d classes (%d images kept of %d) for %s", groups.groups_num,
                groups.classes_num, groups.image_indices.size, len(images), images.root)
    if path is not None:
        try:
            save_groups(groups, path, meta)
        except OSError as exc:
            logger.warning("could not write the groups cache %s (%s); continuing without it", path, exc)
    return groups
