"""Write a synthetic world to disk in the visual geo-localization benchmark layout.

Images are rendered by a pool of worker processes (each task is a fixed list of captures, so the
output is byte-identical whatever the number of workers), written as JPEG (quality 90) into a
temporary sibling folder, and the folder is renamed onto the target at the end.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from progeo.data.synthetic.captions import caption
from progeo.data.synthetic.cities import get_style
from progeo.data.synthetic.citymap import CityMap, build_city_map
from progeo.data.synthetic.coords import local_to_latlon, local_to_utm, zone_letter
from progeo.data.synthetic.occluders import make_occluders
from progeo.data.synthetic.plan import FOLDERS, Capture, plan_city
from progeo.data.synthetic.presets import Preset
from progeo.data.synthetic.render import render_batch
from progeo.errors import ConfigError, DatasetError
from progeo.io import write_json_atomic

log = logging.getLogger(__name__)
GENERATOR = "progeo.synthetic"
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")  # each gets its own labels_<split>.csv
JPEG_QUALITY = 90
TASK_IMAGES = 48

_MAPS: dict[tuple[int, str], CityMap] = {}


def city_map(city: str, seed: int = 0) -> CityMap:
    """The (cached) map of ``city`` in the world of ``seed``."""
    if int(seed) < 0:
        raise ConfigError(f"seed={seed} must be a non-negative integer")
    key = (int(seed), get_style(city).name)
    if key not in _MAPS:
        _MAPS[key] = build_city_map(get_style(city), int(seed))
    return _MAPS[key]


@dataclass
class WorldSummary:
    out_dir: Path
    preset: str
    seed: int
    image_size: int
    counts: dict[str, int]
    cities: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_images(self) -> int:
        return sum(self.counts.values())


def image_name(east: float, north: float, zone_number: int, lat: float, lon: float, cam, pano_id: str,
               tile: int, timestamp: str, note: str) -> str:
    """``@UTM_east@UTM_north@zone@letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg``."""
    return (f"@{east:.2f}@{north:.2f}@{zone_number}@{zone_letter(lat)}@{lat:.6f}@{lon:.6f}"
            f"@{pano_id}@{tile}@{cam.heading:.2f}@{cam.pitch:.2f}@0.00@{cam.height:.2f}@{timestamp}@{note}@.jpg")


def _render_task(args) -> list[tuple]:
    """Render and write one task; returns (folder, path in folder, lat, lon, city, country, caption)."""
    root, seed, size, captures = args
    rows, made = [], set()
    for cap in captures:
        cmap = city_map(cap.city, seed)
        rng = np.random.default_rng(cap.seed)
        occ = make_occluders(rng, cmap, cap.cams, cap.cond.occluders)
        images, infos = render_batch(cmap, list(cap.cams), cap.cond, size, seed=cap.seed % 2**31, occluders=occ)
        xs, ys = [c.x for c in cap.cams], [c.y for c in cap.cams]
        east, north = local_to_utm(cmap.frame, xs, ys)
        lat, lon = local_to_latlon(cmap.frame, xs, ys)
        folder = Path(root) / cap.folder / (cmap.style.slug if cap.folder == "train" else "")
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        for i, (cam, tile, img, info) in enumerate(zip(cap.cams, cap.tiles, images, infos)):
            name = image_name(float(east[i]), float(north[i]), cmap.frame.zone_number, float(lat[i]),
                              float(lon[i]), cam, cap.pano_id, tile, cap.cond.timestamp, cap.cond.note)
            Image.fromarray(img).save(folder / name, format="JPEG", quality=JPEG_QUALITY)
            rel = f"{cmap.style.slug}/{name}" if cap.folder == "train" else name
            text = caption(cmap.style, cmap.buildings, cap.cond, info, rng)
            rows.append((cap.folder, rel, float(lat[i]), float(lon[i]), cmap.style.name, cmap.style.country, text))
    return rows


def _tasks(captures: list[Capture]) -> list[list[Capture]]:
    tasks, cur, n = [], [], 0
    for cap in captures:
        cur.append(cap)
        n += len(cap.cams)
        if n >= TASK_IMAGES:
            tasks.append(cur)
            cur, n = [], 0
    if cur:
        tasks.append(cur)
    return tasks


def _check_target(out: Path, overwrite: bool) -> bool:
    """True if ``out`` holds a world this tool made (to be replaced); raise if it must not be touched."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return True
    manifest = out / "world.json"
    try:
        ours = json.loads(manifest.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ConfigError(f"{out} is not empty and is not a synthetic world made by progeo (no {manifest.name} "
                          "from `progeo synth`); refusing to touch it. Choose an empty or new --out folder")
    if not overwrite:
        raise ConfigError(f"{out} already holds a synthetic world; pass --overwrite (overwrite=True) to replace it")
    return True


def write_world(out_dir, preset: Preset, seed: int, image_size: int, workers: int, overwrite: bool,
                progress: bool) -> WorldSummary:
    from tqdm import tqdm

    start = time.perf_counter()
    out = Path(out_dir).expanduser().absolute()
    replace = _check_target(out, overwrite)
    maps = [city_map(c, seed) for c in preset.cities]
    captures = [cap for m in maps for cap in plan_city(preset, m, seed)]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create a folder beside {out} ({exc}); choose a writable --out") from exc
    try:
        tasks = [(str(tmp), seed, image_size, t) for t in _tasks(captures)]
        rows: list[tuple] = []
        bar = tqdm(total=sum(len(c.cams) for c in captures), desc="synth", unit="img", disable=not progress)
        if workers <= 1:
            results = map(_render_task, tasks)
            pool = None
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers)
            results = pool.imap(_render_task, tasks)
        try:
            for task_rows in results:
                rows.extend(task_rows)
                bar.update(len(task_rows))
            if pool is not None:
                pool.close()
        except BaseException:
            if pool is not None:
                pool.terminate()
            raise
        finally:
            bar.close()
            if pool is not None:
                pool.join()
        counts = _write_indexes(tmp, rows)
        manifest = _manifest(preset, seed, image_size, maps, counts)
        write_json_atomic(tmp / "world.json", manifest)
        _swap(tmp, out, replace)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"writing the synthetic world to {out} failed: {exc}; check the free space "
                          "and permissions of that folder") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    log.info("wrote %d images of the %r world to %s in %.1f s", sum(counts.values()), preset.name, out, seconds)
    return WorldSummary(out, preset.name, seed, image_size, counts, manifest["cities"], seconds)


def _write_indexes(root: Path, rows: list[tuple]) -> dict[str, int]:
    counts = {}
    for folder in FOLDERS:
        paths = [r[1] for r in rows if r[0] == folder]
        counts[folder] = len(paths)
        if not paths:
            raise DatasetError(f"synthetic world has no images in {folder}; the preset is too small")
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / f"{folder}_images_paths.txt").write_text("\n".join(paths) + "\n", encoding="utf-8")
    with open(root / "captions.tsv", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(f"{r[0]}/{r[1]}\t{r[6]}\n")
    for split in ("", *SPLITS):  # labels.csv: every image; labels_<split>.csv: the images under <split>/
        with open(root / (f"labels_{split}.csv" if split else "labels.csv"), "w", encoding="utf-8") as f:
            f.write("path,lat,lon,city,country\n")
            for r in rows:
                if not split or r[0].split("/", 1)[0] == split:
                    f.write(f"{r[0]}/{r[1]},{r[2]:.6f},{r[3]:.6f},{r[4]},{r[5]}\n")
    return counts


def _manifest(preset: Preset, seed: int, image_size: int, maps: list[CityMap], counts: dict) -> dict:
    return {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "preset": preset.name,
        "image_size": int(image_size),
        "fov_deg": preset.fov,
        "camera_height_m": 2.5,
        "heading_convention": "compass degrees, 0 = north, 90 = east",
        "cities": [
            {"name": m.style.name, "country": m.style.country, "lat": m.style.lat, "lon": m.style.lon,
             "utm_zone": m.frame.zone, "utm_zone_number": m.frame.zone_number,
             "utm_zone_letter": m.frame.zone_letter, "utm_origin": [m.frame.east0, m.frame.north0]}
            for m in maps
        ],
        "counts": counts,
        "total_images": int(sum(counts.values())),
        "images_per_city": preset.images_per_city(),
        "capture_years": {"train": list(preset.train_years), "database": preset.db_year,
                          "queries": preset.query_years[0], "queries_night": preset.query_years[1],
                          "queries_occlusion": preset.query_years[2]},
        "positive_radius_m": 25.0,
        "cosplace_cells": {"M": 10, "alpha": 30, "images_per_class": preset.positions_per_cell * len(preset.train_years)},
        "preset_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(preset).items()},
        "paths_files": "each <folder>_images_paths.txt lists paths relative to <folder>",
    }


def _swap(tmp: Path, out: Path, replace: bool) -> None:
    old = None
    if replace and out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
