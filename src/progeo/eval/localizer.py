"""Localize new photos against an index folder built once from a geo-tagged database.

An index folder (``progeo index build``, :func:`build_index_folder`) holds::

    descriptors/        float16 database descriptors + paths + UTMs (progeo.eval.descriptors_io)
    coordinates.npz     per database image: UTM east/north, zone number/letter, lat/lon
    index.faiss(.json)  the faiss index (progeo.eval.search), loaded memory-mapped
    model/              a copy of the model (when it is a progeo GeoLocalizer)
    index.json          model reference and config, image size, index kind and metric, counts;
                        written last (a folder without it is incomplete), removed first on a rebuild

The search metric is the model's (``model.metric``: cosine, or Euclidean distance for ViT
heads that do not normalize) unless the :class:`IndexConfig` names one; it is saved with the
index and used by :class:`Localizer`, which can also search with another metric by re-indexing
the saved float16 descriptors in memory.

:class:`Localizer` ties the model, the index and the coordinates together::

    loc = progeo.Localizer.from_index("my_index")
    for p in loc.localize(["photo.jpg", "more_photos/"], top_k=5):
        print(p.query, p.lat, p.lon, p.confidence)

Position and confidence are :func:`progeo.eval.localize_core.predict_positions`'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from progeo.errors import ConfigError, DatasetError, advise, reading
from progeo.eval.confidence import CONFIDENCE_DEPTH
from progeo.eval.descriptors import describe_files
from progeo.eval.localize_core import (DatabaseCoordinates, PhotoPrediction, cosine_scale_scores, predict_positions,
                                      utm_zones)
from progeo.eval.recall import POSITIVE_DIST_M
from progeo.eval.search import IndexConfig
from progeo.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

INFO_FILE, DESCRIPTORS_DIR, COORDINATES_FILE = "index.json", "descriptors", "coordinates.npz"
INDEX_FILE, MODEL_DIR, FORMAT_VERSION = "index.faiss", "model", 1
_COORD_FIELDS = ("utm_east", "utm_north", "utm_zone_number", "utm_zone_letter", "lat", "lon")


def coordinates_from_names(paths: Sequence[str]) -> DatabaseCoordinates:
    """UTM and lat/lon of images named in the VG format; a missing zone is taken from lat/lon."""
    from progeo.data.vg_names import parse_vg_names

    parsed = parse_vg_names(paths, fields=_COORD_FIELDS, required=("utm_east", "utm_north"))
    zone, letter = parsed["utm_zone_number"].copy(), parsed["utm_zone_letter"].astype(str)
    lat, lon = parsed["lat"], parsed["lon"]
    no_zone = ~np.isfinite(zone) | (letter == "")
    bad = np.flatnonzero(no_zone & ~(np.isfinite(lat) & np.isfinite(lon)))
    if bad.size:
        raise DatasetError(f"{paths[int(bad[0])]} (and {bad.size - 1} more) has neither the UTM zone (fields 3-4) nor "
                           f"lat/lon (fields 5-6), so it cannot be placed on a map; fill them in the image names")
    if no_zone.any():
        zone[no_zone], letter[no_zone] = utm_zones(lat[no_zone], lon[no_zone])
    return DatabaseCoordinates(parsed["utm_east"], parsed["utm_north"], zone.astype(np.int64), letter, lat, lon)


def _save_coordinates(coords: DatabaseCoordinates, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, east=coords.east, north=coords.north, zone_number=coords.zone_number,
                 zone_letter=coords.zone_letter.astype("S1"), lat=coords.lat, lon=coords.lon)


def rebuild_advice(folder: Path, info: dict | None = None) -> str:
    """How to rebuild the index folder ``folder`` (with its model and database when ``info`` says them)."""
    model, database = (info or {}).get("model", {}).get("ref") or "M", (info or {}).get("database") or "DIR"
    return f"rebuild the index: `progeo index build --model {model} --database {database} --out {folder}`"


def _load_coordinates(path: Path, paths: Sequence[str], fix: str) -> DatabaseCoordinates:
    with reading(path, "index coordinates", fix):
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("east", "north", "zone_number", "zone_letter", "lat", "lon")}
    return DatabaseCoordinates(**{**arrays, "zone_letter": arrays["zone_letter"].astype(str)}, paths=paths)


@dataclass(frozen=True)
class IndexFolderSummary:
    path: Path
    count: int
    skipped_paths: list[str]
    seconds: dict[str, float]
    metric: str = "cosine"


def build_index_folder(model, database: str | os.PathLike, out: str | os.PathLike, *, index: IndexConfig = IndexConfig(),
                       model_ref: str = "", batch_size: int = 64, device: str = "cpu", num_workers: int = 0,
                       on_bad_image: str = "fail", image_size=None, resize_mode: str = "resize", amp: bool = True,
                       progress: bool = True, overwrite: bool = False) -> IndexFolderSummary:
    """Describe every image of the ``database`` folder and write an index folder to ``out``
    (``index.metric`` unset: the model's metric).

    ``out`` is locked while it is written (:mod:`progeo.locks`: a second writer is refused); an
    index already there is replaced only with ``overwrite``, once the database's names are read."""
    from progeo.locks import folder_lock

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the index")
    with folder_lock(out, flag="--out"):
        old = [n for n in (INFO_FILE, INDEX_FILE, DESCRIPTORS_DIR, COORDINATES_FILE) if (out / n).exists()]
        if old and not overwrite:
            raise ConfigError(f"--out {out} already holds an index ({', '.join(old)}); pass --overwrite "
                              "(overwrite=True) to replace it, or choose another --out")
        return _build_index_folder(model, database, out, index=index, model_ref=model_ref, batch_size=batch_size,
                                   device=device, num_workers=num_workers, on_bad_image=on_bad_image,
                                   image_size=image_size, resize_mode=resize_mode, amp=amp, progress=progress)


def _build_index_folder(model, database, out: Path, *, index: IndexConfig, model_ref: str, batch_size: int,
                        device: str, num_workers: int, on_bad_image: str, image_size, resize_mode: str, amp: bool,
                        progress: bool) -> IndexFolderSummary:
    from progeo.data.image_lists import read_image_list
    from progeo.eval.descriptors_io import DescriptorsMeta
    from progeo.eval.evaluate import build_database_index, model_metric
    from progeo.eval.search import save_index
    from progeo.models.geolocalizer import GeoLocalizer

    index = index.with_default_metric(model_metric(model))
    images = read_image_list(Path(database).resolve(), what="database folder")
    coords = coordinates_from_names(images)  # fails on a bad name before any image is decoded
    size = tuple(image_size or model.image_size)
    (out / INFO_FILE).unlink(missing_ok=True)  # the old index (with --overwrite) is incomplete from here on
    meta = DescriptorsMeta(model=model_ref, image_size=size, dataset=str(images.root), split="database",
                           metric=index.search_metric)
    described = describe_files(model, images, batch_size=batch_size, device=device, num_workers=num_workers,
                               on_bad_image=on_bad_image, image_size=size, resize_mode=resize_mode, amp=amp,
                               progress=progress, desc="describing the database", utms=np.stack([coords.east, coords.north], 1),
                               save_dir=out / DESCRIPTORS_DIR, meta=meta)
    if not len(described.rows):
        raise DatasetError(f"no readable image in {database}: nothing to index")
    rows = described.rows
    kept = DatabaseCoordinates(coords.east[rows], coords.north[rows], coords.zone_number[rows], coords.zone_letter[rows],
                               coords.lat[rows], coords.lon[rows])
    _save_coordinates(kept, out / COORDINATES_FILE)
    start = time.perf_counter()
    faiss_index = build_database_index(described.descriptors, index, progress)
    save_index(faiss_index, out / INDEX_FILE, index)
    index_seconds = time.perf_counter() - start
    saved_copy = isinstance(model, GeoLocalizer)
    if saved_copy:
        from progeo.models import save_model

        save_model(model, out / MODEL_DIR)
    config = model.config.to_dict() if saved_copy else None
    write_json_atomic(out / INFO_FILE, {
        "format": "progeo-index", "format_version": FORMAT_VERSION,
        "model": {"ref": model_ref, "saved_copy": saved_copy, "descriptor_dim": int(model.descriptor_dim), "config": config},
        "image_size": list(size), "resize_mode": resize_mode, "metric": index.search_metric, "index": asdict(index),
        "database": str(images.root),
        "count": int(len(rows)), "skipped_paths": described.skipped_paths,
    })
    seconds = {"describe": described.seconds, "index": index_seconds}
    return IndexFolderSummary(out, int(len(rows)), described.skipped_paths, seconds, index.search_metric)


def natural_key(path: str) -> list:
    """Sort key putting photo2 before photo10: digit runs compare as numbers, the rest as text
    (case-insensitive, then as written)."""
    return [(0, int(part), part) if part.isdigit() else (1, part.lower(), part)
            for part in re.split(r"(\d+)", path) if part]


def expand_photo_paths(items: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str]:
    """Files in the order given, a folder as its images (recursive) in natural order (photo2
    before photo10); a missing path is an error."""
    from progeo.data.image_lists import walk_images

    items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = list(walk_images(item))
            if not found:
                raise DatasetError(f"no image (.jpg, .jpeg, .png) in the folder {item}")
            paths.extend(sorted(found, key=natural_key))
        elif os.path.exists(item):
            paths.append(os.fspath(item))
        else:
            raise DatasetError(f"photo {item} does not exist: give image files or folders of images")
    return paths


class Localizer:
    """A model + a faiss index + the database coordinates: photos in, positions out."""

    def __init__(self, model, index, coordinates: DatabaseCoordinates, *, image_size=None, resize_mode: str = "resize",
                 positive_dist: float = POSITIVE_DIST_M, device: str = "cpu", batch_size: int = 32,
                 num_workers: int = 0, on_bad_image: str = "fail", progress: bool = False, metric: str | None = None):
        if int(index.d) != int(model.descriptor_dim):
            raise ConfigError(f"the index holds {index.d}-d descriptors but the model gives {model.descriptor_dim}-d: "
                              "use the model the index was built with")
        if int(index.ntotal) != len(coordinates):
            raise DatasetError(f"the index has {index.ntotal} vectors but there are {len(coordinates)} coordinates")
        from progeo.eval.evaluate import model_metric

        self.model, self.index, self.coordinates = model, index, coordinates
        self.metric = metric or model_metric(model)  # the index's: see search.search
        self.image_size = tuple(image_size or model.image_size)
        self.resize_mode, self.positive_dist, self.device = resize_mode, positive_dist, device
        self.batch_size, self.num_workers, self.on_bad_image, self.progress = batch_size, num_workers, on_bad_image, progress
        self.skipped_paths: list[str] = []  # photos of the last call that could not be decoded

    @classmethod
    def from_index(cls, path: str | os.PathLike, *, model=None, device: str = "cpu", mmap: bool = True,
                   metric: str | None = None, **options) -> "Localizer":
        """Open an index folder; the model is its saved copy unless ``model`` is given.

        ``metric``: search with this metric instead of the index's (it is rebuilt in memory,
        same kind, from the folder's float16 descriptors). ``options``: ``batch_size``,
        ``num_workers``, ``on_bad_image``, ``positive_dist``, ``progress``."""
        from progeo.eval.descriptors_io import load_descriptors
        from progeo.eval.search import load_index

        path = Path(path)
        if not (path / INFO_FILE).is_file():
            raise DatasetError(f"{path} is not a complete index folder (no {INFO_FILE}); "
                               f"build it with `progeo index build --model M --database DIR --out {path}`")
        with reading(path / INFO_FILE, "index description", rebuild_advice(path)):
            info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
            if info.get("format") != "progeo-index" or int(info.get("format_version", 0)) > FORMAT_VERSION:
                raise DatasetError(f"{path / INFO_FILE} is not a progeo index of a version this progeo reads; "
                                   f"{rebuild_advice(path, info)}")
            saved_copy, model_ref, image_size = info["model"]["saved_copy"], info["model"]["ref"], info["image_size"]
        fix = rebuild_advice(path, info)
        if model is None:
            if not saved_copy:
                raise ConfigError(f"the index {path} was built with a custom model {model_ref!r} that "
                                  "was not saved with it: pass it, Localizer.from_index(path, model=...)")
            from progeo.models import load_model

            with advise(fix):
                model = load_model(path / MODEL_DIR, device)
        with advise(fix):
            index, config = load_index(path / INDEX_FILE, mmap=mmap)
            saved = load_descriptors(path / DESCRIPTORS_DIR)
        paths = saved.paths
        if metric is not None and metric != config.search_metric:
            from progeo.eval.evaluate import build_database_index

            log.warning("%s was built for the %s metric: re-indexing its %d descriptors for %s in memory "
                        "(`progeo index build --metric %s` saves such an index)", path, config.search_metric,
                        len(paths), metric, metric)
            config = IndexConfig(**{**asdict(config), "metric": metric})
            index = build_database_index(saved.descriptors, config, progress=options.get("progress", False))
        coords = _load_coordinates(path / COORDINATES_FILE, paths, fix)
        return cls(model, index, coords, image_size=image_size, resize_mode=info.get("resize_mode", "resize"),
                   device=device, metric=config.search_metric, **options)

    def localize(self, images, top_k: int = 5) -> list[PhotoPrediction]:
        """Predicted position, confidence and top-k matches of each photo.

        ``images``: a path (file or folder), a list of paths, or decoded images (a uint8 tensor
        or array B x 3 x H x W / B x H x W x 3 at the index's image size, or a list of PIL images).
        With ``on_bad_image="skip"`` unreadable files are left out (see :attr:`skipped_paths`).
        """
        self.skipped_paths = []
        if isinstance(images, (str, os.PathLike)) or (
                isinstance(images, (list, tuple)) and images and all(isinstance(i, (str, os.PathLike)) for i in images)):
            return self.localize_files(expand_photo_paths(images), top_k)
        batch = _as_uint8_batch(images, self.image_size)
        descriptors = np.concatenate([self.model.describe(batch[s : s + self.batch_size], device=self.device)
                                      for s in range(0, len(batch), self.batch_size)])
        return self._predict(descriptors, [f"image {i}" for i in range(len(batch))], top_k)

    def localize_files(self, paths: Sequence[str], top_k: int = 5) -> list[PhotoPrediction]:
        described = describe_files(self.model, paths, batch_size=self.batch_size, device=self.device,
                                   num_workers=self.num_workers, on_bad_image=self.on_bad_image,
                                   image_size=self.image_size, resize_mode=self.resize_mode, progress=self.progress,
                                   desc="describing photos")
        self.skipped_paths = described.skipped_paths
        return self._predict(described.descriptors, [paths[int(r)] for r in described.rows], top_k)

    def _predict(self, descriptors: np.ndarray, names: list[str], top_k: int) -> list[PhotoPrediction]:
        from progeo.eval.search import search

        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be at least 1")
        if not len(names):
            return []
        depth = min(max(top_k, CONFIDENCE_DEPTH), int(self.index.ntotal))  # the confidence always sees 10
        scores, ids = search(self.index, descriptors, depth, metric=self.metric)
        conf_scores = None
        if self.metric == "l2":  # the confidence's temperature is in cosine units
            conf_scores = cosine_scale_scores(scores, np.linalg.norm(np.asarray(descriptors, dtype=np.float64), axis=1))
        return predict_positions(ids, scores, self.coordinates, names, self.positive_dist, top_k=top_k,
                                 confidence_scores=conf_scores)


def _as_uint8_batch(images, image_size: tuple[int, int]):
    """Decoded images (PIL list, tensor or array) as a uint8 B x 3 x H x W tensor at ``image_size``."""
    import torch
    import torch.nn.functional as F

    from progeo.data.images import pil_to_uint8_tensor
    from progeo.models.inference import as_nchw

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


def save_match_grid(predictions: Sequence[PhotoPrediction], path: str | os.PathLike, top_k: int = 5,
                    positive_dist: float = POSITIVE_DIST_M, max_rows: int = 50) -> int:
    """Draw each photo, labelled by its file name, with its top-k matches framed by their distance
    to the predicted position (legend in the picture; :func:`progeo.eval.visualize.save_localization_grid`),
    rows in the order of ``predictions``; returns the number of rows drawn."""
    from progeo.eval.visualize import save_localization_grid

    if not predictions:
        raise ConfigError(f"no prediction to draw in {path}: localize at least one photo")
    return save_localization_grid(
        path, [p.query for p in predictions], [os.path.basename(p.query) for p in predictions],
        [[m.path or "" for m in p.matches[:top_k]] for p in predictions],
        [[m.distance_to_prediction_m for m in p.matches[:top_k]] for p in predictions],
        [p.confidence for p in predictions], positive_dist=positive_dist, max_rows=max_rows)
