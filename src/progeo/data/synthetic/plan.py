"""Where and when every image of a world is captured.

Each city's map is split into districts: training panoramas lie on streets west of x = -15 m,
validation on streets in the north-east quadrant and test on streets in the south-east quadrant
(x > 15 m and |y| > 15 m), so no val/test place is seen in training. Training panoramas sit
``positions_per_cell`` times per 10 m cell and capture year along street centrelines (a CosPlace
class gets ``positions_per_cell * years`` images), with 12 headings (one per 30-degree bin,
jittered inside the bin). The database is a panorama every few metres in one year; queries are
taken in other years a few metres from database positions (every query has database images
within 25 m), by day, at night, or behind heavy occluders.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from progeo.data.synthetic.citymap import CityMap, Segment
from progeo.data.synthetic.conditions import Conditions, sample_conditions
from progeo.data.synthetic.presets import Preset, db_offsets
from progeo.data.synthetic.render import Camera
from progeo.errors import ConfigError

FOLDERS = ("train", "val/database", "val/queries", "test/database", "test/queries",
           "test/queries_night", "test/queries_occlusion")
QUERY_GROUP = 4  # queries of one folder share conditions in groups of this size


@dataclass(frozen=True)
class Capture:
    folder: str
    city: str
    pano_id: str
    cams: tuple[Camera, ...]
    tiles: tuple[int, ...]
    cond: Conditions
    seed: int


def _seed(world_seed: int, *parts) -> int:
    key = [int(world_seed)] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def _bbox(seg: Segment) -> tuple[float, float, float, float]:
    if seg.axis == "x":
        return seg.start, seg.end, seg.coord, seg.coord
    return seg.coord, seg.coord, seg.start, seg.end


def _district(seg: Segment, name: str) -> bool:
    x0, x1, y0, y1 = _bbox(seg)
    if name == "train":
        return x1 < -15
    if name == "val":
        return x0 > 15 and y0 > 15
    return x0 > 15 and y1 < -15


def _segments(cmap: CityMap, district: str, rng: np.random.Generator) -> list[Segment]:
    segs = [s for s in cmap.segments if s.routable and _district(s, district)]
    return [segs[i] for i in rng.permutation(len(segs))]


def _lateral(rng, seg: Segment, limit: float) -> float:
    return float(rng.uniform(-1, 1) * min(limit, max(seg.road_half - 1.2, 0.0)))


def plan_train(preset: Preset, cmap: CityMap, world_seed: int) -> list[Capture]:
    city = cmap.style.name
    rng = np.random.default_rng(_seed(world_seed, city, "train-plan"))
    cells: list[tuple[Segment, int]] = []
    for seg in _segments(cmap, "train", rng):
        k0, k1 = int(np.ceil((seg.start + 5) / 10)), int(np.floor((seg.end - 5) / 10))
        cells.extend((seg, k) for k in range(k0, k1))
        if len(cells) >= preset.train_cells:
            break
    if len(cells) < preset.train_cells:
        raise ConfigError(f"{city}: only {len(cells)} street cells in the training district, "
                          f"preset {preset.name!r} needs {preset.train_cells}")
    out = []
    ppc, step = preset.positions_per_cell, 360.0 / preset.headings
    for seg, k in cells[:preset.train_cells]:
        for year in preset.train_years:
            for j in range(ppc):
                idx = len(out)
                r = np.random.default_rng(_seed(world_seed, city, "train", idx))
                along = 10.0 * k + (j + 0.5) * 10.0 / ppc + r.uniform(-0.4, 0.4)
                x, y = seg.point(along, _lateral(r, seg, 1.2))
                time = "night" if r.random() < 0.05 else "dusk" if r.random() < 0.05 else "day"
                cond = sample_conditions(r, cmap.style, year, time=time,
                                         occluders="light" if r.random() < 0.5 else "none")
                cams = tuple(Camera(float(x), float(y), float((h * step + step / 2 + r.uniform(-10, 10)) % 360),
                                    float(r.uniform(-2, 2)), float(preset.fov + r.uniform(-3, 3)))
                             for h in range(preset.headings))
                out.append(Capture("train", city, f"{cmap.style.slug}-tr{idx:06d}", cams,
                                   tuple(range(preset.headings)), cond, _seed(world_seed, city, "train-r", idx)))
    return out


def _db_positions(preset: Preset, cmap: CityMap, district: str, length: float, world_seed: int):
    """(segment, along) of database panoramas: every ``db_spacing`` m along district streets."""
    rng = np.random.default_rng(_seed(world_seed, cmap.style.name, district, "plan"))
    pieces, total = [], 0.0
    for seg in _segments(cmap, district, rng):
        lo, hi = seg.start + 6.0, seg.end - 6.0
        if hi - lo < preset.db_spacing:
            continue
        pieces.append((seg, lo, hi, total))
        total += hi - lo
        if total >= length:
            break
    if total < length:
        raise ConfigError(f"{cmap.style.name}: only {total:.0f} m of street in the {district} district, "
                          f"preset {preset.name!r} needs {length:.0f} m")
    out = []
    for s in db_offsets(length, preset.db_spacing):
        seg, lo, hi, base = next(p for p in pieces if p[3] <= s < p[3] + (p[2] - p[1]))
        out.append((seg, lo + (s - base), lo, hi))
    return out


def plan_eval(preset: Preset, cmap: CityMap, world_seed: int, split: str) -> list[Capture]:
    """Database and query captures of ``split`` ("val" or "test") in one city."""
    city, style = cmap.style.name, cmap.style
    length = preset.val_db_length if split == "val" else preset.test_db_length
    positions = _db_positions(preset, cmap, split, length, world_seed)
    out = []
    step = 360.0 / preset.db_headings
    for i, (seg, along, _, _) in enumerate(positions):
        r = np.random.default_rng(_seed(world_seed, city, split, "db", i))
        x, y = seg.point(along + r.uniform(-0.3, 0.3), _lateral(r, seg, 0.8))
        cond = sample_conditions(r, style, preset.db_year, weather="clear" if r.random() < 0.7 else "overcast",
                                 month=int(r.integers(4, 10)), occluders="light" if r.random() < 0.4 else "none")
        cams = tuple(Camera(float(x), float(y), float((h * step + r.uniform(-4, 4)) % 360), float(r.uniform(-1, 1)),
                            preset.fov) for h in range(preset.db_headings))
        out.append(Capture(f"{split}/database", city, f"{style.slug}-{split}db{i:05d}", cams,
                           tuple(range(preset.db_headings)), cond, _seed(world_seed, city, split, "db-r", i)))
    kinds = [("queries", 0)] if split == "val" else [("queries", 0), ("queries_night", 1), ("queries_occlusion", 2)]
    count = preset.val_queries if split == "val" else preset.test_queries
    for folder, qi in kinds:
        for g in range(0, count, QUERY_GROUP):
            r = np.random.default_rng(_seed(world_seed, city, split, folder, g))
            cond = sample_conditions(r, style, preset.query_years[qi], time="night" if qi == 1 else "day",
                                     occluders="heavy" if qi == 2 else "light" if r.random() < 0.5 else "none")
            cams = []
            for _ in range(min(QUERY_GROUP, count - g)):
                seg, along, lo, hi = positions[int(r.integers(len(positions)))]
                a = float(np.clip(along + r.uniform(-4, 4), lo, hi))
                x, y = seg.point(a, _lateral(r, seg, 1.5))
                fov = float(np.clip(preset.fov + r.uniform(-8, 8), 60, 90))
                cams.append(Camera(float(x), float(y), float(r.uniform(0, 360)), float(r.uniform(-4, 4)), fov))
            tag = {"queries": "q", "queries_night": "qn", "queries_occlusion": "qo"}[folder]
            out.append(Capture(f"{split}/{folder}", city, f"{style.slug}-{split}{tag}{g:05d}", tuple(cams),
                               tuple(range(len(cams))), cond, _seed(world_seed, city, split, folder, "r", g)))
    return out


def plan_city(preset: Preset, cmap: CityMap, world_seed: int) -> list[Capture]:
    return plan_train(preset, cmap, world_seed) + plan_eval(preset, cmap, world_seed, "val") \
        + plan_eval(preset, cmap, world_seed, "test")
