"""A synthetic street-view world for tests, the demo and benchmarks (no download needed).

Six real cities with their own architecture (Lisbon and Porto in Portugal, Oslo and Bergen in
Norway, Kyoto in Japan, Marrakesh in Morocco) are generated as procedural maps of streets and
unique buildings, and photographed by a vectorized numpy ray caster at street level, with
night, fog, rain, snow, seasons, occluders, camera jitter and facades that change between
capture years. Positions are real UTM / WGS84 coordinates around each city's centre.

``generate_world(out_dir, preset)`` writes the visual geo-localization benchmark layout::

    DIR/world.json                      manifest (seed, preset, image size, fov, cities, counts)
    DIR/train/<city>/@...@.jpg          + DIR/train_images_paths.txt
    DIR/val/database/, DIR/val/queries/                    (+ *_images_paths.txt beside each)
    DIR/test/database/, DIR/test/queries/, DIR/test/queries_night/, DIR/test/queries_occlusion/
    DIR/captions.tsv                    path<TAB>caption (path relative to DIR), every image
    DIR/labels.csv                      path,lat,lon,city,country (path relative to DIR)
    DIR/labels_{train,val,test}.csv     the same rows split by top folder (GEM probe fit / eval)

Paths in ``<folder>_images_paths.txt`` are relative to ``<folder>``. File names follow
``@UTM_east@UTM_north@UTM_zone_number@UTM_zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg``
(heading in compass degrees, timestamp YYYYMM, note = conditions, e.g. ``night-rain-autumn``).

Presets (images per city: train / val / test; CPU time of the whole generation, all processes,
measured with ``benchmarks/bench_synth.py``; the wall time on two idle cores is about half):

========  ======  =====  ==========================  ========  ==========  =========================
preset    cities  size   per city                    total     CPU time    use
========  ======  =====  ==========================  ========  ==========  =========================
tiny      3       64     432 / 58 / 94               1,752     ~4 s        tests (``tiny_world``)
small     6       128    720 / 79 / 188              5,922     ~24 s       quick experiments
default   6       128    1,440 / 121 / 360           11,526    ~47 s       ``make demo``
========  ======  =====  ==========================  ========  ==========  =========================

Rendering runs at ~300 images/s (128 px) and ~900 images/s (64 px) per core, JPEG included.

Training classes (10 m x 10 m x 30 degrees CosPlace cells) get 12 images each (4 panoramas per
cell and capture year, 3 years); val/test streets lie in districts never seen in training; every
query has database images within 25 m.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from progeo.data.synthetic.cities import CITY_STYLES, CityStyle
from progeo.data.synthetic.citymap import CityMap
from progeo.data.synthetic.conditions import Conditions
from progeo.data.synthetic.occluders import make_occluders
from progeo.data.synthetic.presets import PRESETS, Preset, get_preset
from progeo.data.synthetic.render import Camera, ViewInfo, render_batch
from progeo.data.synthetic.writer import WorldSummary, city_map, write_world
from progeo.errors import ConfigError

__all__ = [
    "CITY_STYLES", "Camera", "CityMap", "CityStyle", "Conditions", "PRESETS", "Preset", "ViewInfo",
    "WorldSummary", "city_map", "generate_world", "render_batch", "render_view",
]


def generate_world(out_dir: str | os.PathLike, preset: str | Preset = "default", seed: int = 0, *,
                   image_size: int | None = None, workers: int | None = None, overwrite: bool = False,
                   progress: bool = False) -> WorldSummary:
    """Render a synthetic world into ``out_dir`` (layout in the module docstring).

    ``workers`` processes render in parallel (default: all cores); the files are byte-identical
    for a seed whatever the number of workers. ``out_dir`` must be new, empty, or a world made
    by this function (then only with ``overwrite=True``); other folders are never touched.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    size = int(image_size or p.image_size)
    if not 16 <= size <= 1024:
        raise ConfigError(f"image_size={size} must be between 16 and 1024 pixels")
    if int(seed) < 0:
        raise ConfigError(f"seed={seed} must be a non-negative integer")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(workers)
    if workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1")
    return write_world(Path(out_dir), p, int(seed), size, workers, overwrite, progress)


def render_view(city: str = "Lisbon", x: float = 0.0, y: float = 0.0, heading: float = 0.0, *,
                pitch: float = 0.0, fov: float = 75.0, image_size: int = 128,
                conditions: Conditions | None = None, seed: int = 0, noise_seed: int = 0) -> np.ndarray:
    """One view (uint8, (image_size, image_size, 3)) of ``city`` in the world of ``seed``.

    ``(x, y)`` is in metres east/north of the city centre, ``heading`` in compass degrees. The
    conditions' ``occluders`` level places cars and pedestrians drawn from ``noise_seed``.
    """
    cmap = city_map(city, seed)
    cond = conditions or Conditions()
    cam = Camera(float(x), float(y), float(heading), float(pitch), float(fov))
    occ = make_occluders(np.random.default_rng(noise_seed), cmap, [cam], cond.occluders)
    images, _ = render_batch(cmap, [cam], cond, int(image_size), seed=noise_seed, occluders=occ)
    return images[0]
