"""A searchable geo-tagged database: the :class:`Index` object and its folder format.

An index folder (``progeo index build``; :meth:`Index.build` with ``out``; :meth:`Index.save`) holds::

    descriptors/        float16 database descriptors + paths + UTMs (progeo.eval.descriptors_io)
    coordinates.npz     per database image: UTM east/north, zone number/letter, lat/lon
    index.faiss(.json)  the faiss index (progeo.eval.search), loaded memory-mapped
    model/              a copy of the model (when it is a progeo GeoLocalizer)
    index.json          model reference and config, image size, index kind and metric, counts;
                        written last (a folder without it is incomplete), removed first on a rebuild

The search metric (the model's unless the :class:`IndexConfig` names one) is saved with the index;
:meth:`Index.with_metric` searches with another one by re-indexing the descriptors in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from progeo.errors import ConfigError, DatasetError, advise, reading
from progeo.eval.localize_core import DatabaseCoordinates, utm_zones
from progeo.eval.search import IndexConfig, build_index, search
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


def rebuild_advice(folder: Path, info: dict | None = None) -> str:
    """How to rebuild the index folder ``folder`` (with its model and database when ``info`` says them)."""
    model, database = (info or {}).get("model", {}).get("ref") or "M", (info or {}).get("database") or "DIR"
    return f"rebuild the index: `progeo index build --model {model} --database {database} --out {folder}`"


class Index:
    """Descriptors of geo-tagged database images, searchable: a faiss index with its
    :class:`IndexConfig` (kind and metric), the coordinates of every image (search ids are their
    rows) and what described them (``info``: model reference, image size, database, skipped images)."""

    def __init__(self, faiss_index, config: IndexConfig, coordinates: DatabaseCoordinates, descriptors: np.ndarray, *,
                 info: dict | None = None, model=None, path: Path | None = None):
        if int(faiss_index.ntotal) != len(coordinates) or len(descriptors) != len(coordinates):
            raise DatasetError(f"the index has {faiss_index.ntotal} vectors and {len(descriptors)} descriptors but "
                               f"there are {len(coordinates)} coordinates")
        self.faiss_index, self.config, self.coordinates, self.descriptors = faiss_index, config, coordinates, descriptors
        self.info, self.model, self.path = dict(info or {}), model, path

    @property
    def metric(self) -> str:
        return self.config.search_metric

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.info["image_size"])

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def search(self, queries: np.ndarray, k: int = 5, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` database rows of each query descriptor, best first: ``(scores Q x k, ids Q x k)``
        (:func:`progeo.eval.search.search`: cosine similarities or minus Euclidean distances)."""
        return search(self.faiss_index, np.asarray(queries), k, batch_size=batch_size, metric=self.metric)

    def with_metric(self, metric: str | None) -> "Index":
        """This index searched with ``metric``: itself, or a copy re-indexed in memory (same kind)."""
        if metric is None or metric == self.metric:
            return self
        log.warning("%s was built for the %s metric: re-indexing its %d descriptors for %s in memory "
                    "(`progeo index build --metric %s` saves such an index)", self.path or "the index", self.metric,
                    len(self), metric, metric)
        config = dataclasses.replace(self.config, metric=metric)
        return Index(build_index(self.descriptors, config, progress=False), config, self.coordinates, self.descriptors,
                     info=self.info, model=self.model, path=self.path)

    @classmethod
    def build(cls, model, database: str | os.PathLike, out: str | os.PathLike | None = None, *,
              index: IndexConfig = IndexConfig(), model_ref: str = "", overwrite: bool = False, **options) -> "Index":
        """Describe every image of the ``database`` folder (named ``@UTM_east@UTM_north@zone@letter@lat@lon@...``)
        and index them (``index.metric`` unset: the model's metric).

        ``out``: write the index folder there as the descriptors come (for databases too large for
        memory); an index already there is replaced only with ``overwrite``. ``options``: as
        :func:`~progeo.eval.descriptors.describe_files` takes them (``batch_size``, ``device`` (the model's),
        ``num_workers``, ``on_bad_image``, ``image_size``, ``resize_mode``, ``amp``, ``progress``).
        """
        from progeo.eval.evaluate import model_metric

        index = index.with_default_metric(model_metric(model))
        if out is None:
            return cls._build(model, database, None, index, model_ref, options)
        with _writing(out, overwrite) as out:
            built = cls._build(model, database, out, index, model_ref, options)
            built._write(out)
            return built

    @classmethod
    def _build(cls, model, database, out: Path | None, index: IndexConfig, model_ref: str, options: dict) -> "Index":
        from progeo.data.image_lists import read_image_list
        from progeo.eval.descriptors import describe_files
        from progeo.eval.descriptors_io import DescriptorsMeta

        images = read_image_list(Path(database).resolve(), what="database folder")
        coords = coordinates_from_names(images)  # fails on a bad name before any image is decoded
        size = tuple(options.pop("image_size", None) or model.image_size)
        options.setdefault("device", getattr(model, "device", "cpu"))
        if out is not None:
            (out / INFO_FILE).unlink(missing_ok=True)  # the old index (with --overwrite) is incomplete from here on
        meta = DescriptorsMeta(model=model_ref, image_size=size, dataset=str(images.root), split="database",
                               metric=index.search_metric)
        described = describe_files(model, images, image_size=size, desc="describing the database", meta=meta,
                                   utms=np.stack([coords.east, coords.north], 1),
                                   save_dir=None if out is None else out / DESCRIPTORS_DIR, **options)
        if not len(described.rows):
            raise DatasetError(f"no readable image in {database}: nothing to index")
        rows = described.rows
        kept = DatabaseCoordinates(coords.east[rows], coords.north[rows], coords.zone_number[rows],
                                   coords.zone_letter[rows], coords.lat[rows], coords.lon[rows],
                                   paths=[images[int(r)] for r in rows])
        start = time.perf_counter()
        faiss_index = build_index(described.descriptors, index, progress=options.get("progress", True))
        info = {"model": {"ref": model_ref}, "image_size": list(size), "resize_mode": options.get("resize_mode", "resize"),
                "database": str(images.root), "skipped_paths": described.skipped_paths,
                "seconds": {"describe": described.seconds, "index": time.perf_counter() - start}}
        return cls(faiss_index, index, kept, described.descriptors, info=info, model=model, path=out)

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write this index as an index folder (see the module docstring); returns the folder."""
        from progeo.eval.descriptors_io import DescriptorsMeta, save_descriptors

        with _writing(folder, overwrite) as folder:
            (folder / INFO_FILE).unlink(missing_ok=True)
            meta = DescriptorsMeta(model=self.info["model"]["ref"], image_size=self.image_size,
                                   dataset=self.info.get("database", ""), split="database", metric=self.metric)
            c = self.coordinates
            save_descriptors(folder / DESCRIPTORS_DIR, self.descriptors, c.paths, meta, np.stack([c.east, c.north], 1))
            self._write(folder)
        return folder

    def _write(self, out: Path) -> None:
        """Everything but the descriptors; ``index.json`` last."""
        from progeo.eval.search import save_index
        from progeo.models.geolocalizer import GeoLocalizer

        c = self.coordinates
        with atomic_path(out / COORDINATES_FILE) as tmp, open(tmp, "wb") as f:
            np.savez(f, east=c.east, north=c.north, zone_number=c.zone_number, zone_letter=c.zone_letter.astype("S1"),
                     lat=c.lat, lon=c.lon)
        save_index(self.faiss_index, out / INDEX_FILE, self.config)
        saved_copy = isinstance(self.model, GeoLocalizer)
        if saved_copy:
            from progeo.models import save_model

            save_model(self.model, out / MODEL_DIR)
        model = {"ref": self.info["model"]["ref"], "saved_copy": saved_copy, "descriptor_dim": self.dim,
                 "config": self.model.config.to_dict() if saved_copy else None}
        self.info.update({"format": "progeo-index", "format_version": FORMAT_VERSION, "model": model,
                          "metric": self.metric, "index": dataclasses.asdict(self.config), "count": len(self)})
        write_json_atomic(out / INFO_FILE, {k: v for k, v in self.info.items() if k != "seconds"})
        self.path = out

    @classmethod
    def load(cls, path: str | os.PathLike, *, model=None, device: str = "cpu", mmap: bool = True) -> "Index":
        """Open an index folder (its codes memory-mapped with ``mmap``); ``model``: the model its
        queries are described with, else the folder's saved copy (loaded on ``device``) if it has one."""
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
            saved_copy = info["model"]["saved_copy"]
            _ = info["model"]["ref"], info["image_size"]  # present, or the description is damaged
        fix = rebuild_advice(path, info)
        with advise(fix):
            if model is None and saved_copy:
                from progeo.models import load_model

                model = load_model(path / MODEL_DIR, device)
            faiss_index, config = load_index(path / INDEX_FILE, mmap=mmap)
            saved = load_descriptors(path / DESCRIPTORS_DIR)
        with reading(path / COORDINATES_FILE, "index coordinates", fix):
            with np.load(path / COORDINATES_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("east", "north", "zone_number", "zone_letter", "lat", "lon")}
        coords = DatabaseCoordinates(**{**arrays, "zone_letter": arrays["zone_letter"].astype(str)}, paths=saved.paths)
        return cls(faiss_index, config, coords, saved.descriptors, info=info, model=model, path=path)


@contextlib.contextmanager
def _writing(folder: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """``folder`` locked for writing an index (:mod:`progeo.locks`), refused if it holds one unless ``overwrite``."""
    from progeo.locks import folder_lock

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file: give a folder for the index")
    with folder_lock(folder, flag="--out"):
        old = [n for n in (INFO_FILE, INDEX_FILE, DESCRIPTORS_DIR, COORDINATES_FILE) if (folder / n).exists()]
        if old and not overwrite:
            raise ConfigError(f"--out {folder} already holds an index ({', '.join(old)}); pass --overwrite "
                              "(overwrite=True) to replace it, or choose another --out")
        yield folder
