"""A procedural city map: streets, blocks, buildings, trees and lamp posts on a raster.

The map covers ``[-HALF, HALF]^2`` metres of the city's local frame (x east, y north). Streets
run along x or y with centrelines on ``10 k + 5`` metres, so a camera on a centreline sits in the
middle of a CosPlace 10 m cell; block lengths, street widths and lot widths vary per city, some
street segments are closed (T-junctions, dead ends) and buildings step back from the street by
a random setback. Rasters (0.5 m cells, indexed ``[ix, iy]``) hold the building id, the thin
object id (trees, lamp posts), the ground type and road paint; the renderer marches rays
through them. Buildings carry all their facade parameters (see :mod:`.buildings`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from progeo.data.synthetic.buildings import BuildingTable, sample_building
from progeo.data.synthetic.cities import TREES, CityStyle
from progeo.data.synthetic.coords import UTMFrame, city_frame

HALF = 200.0
RES = 0.5
G_ROAD, G_SIDEWALK, G_PLAZA, G_GRASS = 0, 1, 2, 3
P_NONE, P_LINE, P_CROSS = 0, 1, 2
LAMP = len(TREES)  # thin-object kind of a lamp post; kinds below are tree kinds
UTILITY = LAMP + 1  # concrete utility pole with a cross-arm (no light)


@dataclass(frozen=True)
class Segment:
    """A straight street piece between the centrelines of two crossing streets."""

    axis: str  # "x": runs east-west (along x); "y": runs north-south
    coord: float  # centreline position across the street
    start: float
    end: float
    road_half: float
    sidewalk: float
    routable: bool  # both ends are real intersections (cameras may be placed here)

    @property
    def length(self) -> float:
        return self.end - self.start

    def point(self, along, lateral=0.0):
        along = np.asarray(along, dtype=np.float64)
        lateral = np.asarray(lateral, dtype=np.float64)
        if self.axis == "x":
            return along, self.coord + lateral
        return self.coord + lateral, along


@dataclass
class ThinObjects:
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    height: np.ndarray
    kind: np.ndarray
    seed: np.ndarray


@dataclass
class CityMap:
    style: CityStyle
    seed: int
    frame: UTMFrame
    building: np.ndarray
    thin: np.ndarray
    ground: np.ndarray
    paint: np.ndarray
    buildings: BuildingTable
    thin_objs: ThinObjects
    segments: list[Segment] = field(default_factory=list)
    half: float = HALF
    res: float = RES

    def cell(self, x, y):
        n = self.building.shape[0]
        ix = np.clip(((np.asarray(x) + self.half) / self.res).astype(np.int64), 0, n - 1)
        iy = np.clip(((np.asarray(y) + self.half) / self.res).astype(np.int64), 0, n - 1)
        return ix, iy

    def is_free(self, x, y) -> np.ndarray:
        ix, iy = self.cell(x, y)
        return self.building[ix, iy] == 0


def city_seed(world_seed: int, city: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(world_seed), zlib.crc32(city.encode())])


def _lines(rng: np.random.Generator, style: CityStyle) -> list[float]:
    c, out = -HALF + 15.0, []
    c = 10.0 * np.floor(c / 10.0) + 5.0
    while c <= HALF - 15.0:
        out.append(float(c))
        c += float(rng.choice(style.block_lengths))
    return out


class _Raster:
    def __init__(self) -> None:
        n = int(round(2 * HALF / RES))
        self.n = n
        self.building = np.zeros((n, n), dtype=np.int32)
        self.thin = np.full((n, n), -1, dtype=np.int32)
        self.ground = np.full((n, n), G_PLAZA, dtype=np.uint8)
        self.paint = np.zeros((n, n), dtype=np.uint8)

    def idx(self, v: float) -> int:
        return min(max(int(round((float(v) + HALF) / RES)), 0), self.n)

    def rect(self, arr: np.ndarray, x0, x1, y0, y1, value) -> None:
        arr[self.idx(x0):self.idx(x1), self.idx(y0):self.idx(y1)] = value

    def seg_rect(self, arr, seg: Segment, a0, a1, l0, l1, value) -> None:
        if seg.axis == "x":
            self.rect(arr, a0, a1, seg.coord + l0, seg.coord + l1, value)
        else:
            self.rect(arr, seg.coord + l0, seg.coord + l1, a0, a1, value)


def build_city_map(style: CityStyle, world_seed: int = 0) -> CityMap:
    """Generate the map of ``style``'s city for a world seed (deterministic, ~0.1 s)."""
    rng = np.random.default_rng(city_seed(world_seed, style.name))
    xs, ys = _lines(rng, style), _lines(rng, style)
    widths = {("y", c): (rng.uniform(*style.street_width), rng.uniform(*style.sidewalk)) for c in xs}
    widths.update({("x", c): (rng.uniform(*style.street_width), rng.uniform(*style.sidewalk)) for c in ys})
    half_w = {k: w / 2 for k, (w, _) in widths.items()}
    r = _Raster()
    segments: list[Segment] = []
    exists: dict[tuple[str, float, int], bool] = {}
    for axis, lines, cross in (("y", xs, ys), ("x", ys, xs)):
        stops = [-HALF] + cross + [HALF]
        for c in lines:
            w, sw = widths[(axis, c)]
            for k in range(len(stops) - 1):
                routable = 0 < k < len(stops) - 2
                ok = not (routable and rng.random() < 0.1)
                exists[(axis, c, k)] = ok
                if ok:
                    segments.append(Segment(axis, c, stops[k], stops[k + 1], w / 2 - sw, sw, routable))
    for seg in segments:  # sidewalks first, then roads on top (intersections become road)
        r.seg_rect(r.ground, seg, seg.start, seg.end, -seg.road_half - seg.sidewalk,
                   seg.road_half + seg.sidewalk, G_SIDEWALK)
    for seg in segments:
        r.seg_rect(r.ground, seg, seg.start, seg.end, -seg.road_half, seg.road_half, G_ROAD)
    _paint_markings(r, segments, half_w)

    table = BuildingTable.empty()
    gxs, gys = [-HALF] + xs + [HALF], [-HALF] + ys + [HALF]
    for i in range(len(gxs) - 1):
        for j in range(len(gys) - 1):
            def inner(axis, lines, idx, side, other_k):
                c = lines[idx]
                if c in (-HALF, HALF):
                    return c
                if not exists.get((axis, c, other_k), False):
                    return c
                return c + side * half_w[(axis, c)]
            bx0 = inner("y", gxs, i, +1, j)
            bx1 = inner("y", gxs, i + 1, -1, j)
            by0 = inner("x", gys, j, +1, i)
            by1 = inner("x", gys, j + 1, -1, i)
            if bx1 - bx0 > 2 and by1 - by0 > 2:
                _fill_block(rng, style, r, table, bx0, bx1, by0, by1)
    thin = _place_thin(rng, style, r, segments, half_w, table.parks)
    return CityMap(style, int(world_seed), city_frame(style.lat, style.lon), r.building, r.thin,
                   r.ground, r.paint, table.finish(), thin, segments)


def _paint_markings(r: _Raster, segments: list[Segment], half_w: dict) -> None:
    for seg in segments:
        if seg.road_half < 2.8:
            continue
        other = "x" if seg.axis == "y" else "y"
        a0 = seg.start + half_w.get((other, seg.start), 0.0)
        a1 = seg.end - half_w.get((other, seg.end), 0.0)
        for a in np.arange(a0 + 5.0, a1 - 5.0, 6.0):
            r.seg_rect(r.paint, seg, a, min(a + 3.0, a1 - 5.0), -0.25, 0.25, P_LINE)
        for a, s in ((a0, 1), (a1, -1)):
            if (other, seg.start if s == 1 else seg.end) not in half_w:
                continue
            lo, hi = sorted((a + s * 0.8, a + s * 3.8))
            for lat in np.arange(-seg.road_half + 0.3, seg.road_half - 0.3, 1.0):
                r.seg_rect(r.paint, seg, lo, hi, lat, lat + 0.5, P_CROSS)


def _split(rng: np.random.Generator, length: float, lo: float, hi: float) -> list[float]:
    widths, left = [], length
    while left > 0:
        w = rng.uniform(lo, hi)
        if left - w < lo:
            w = left if left < hi * 1.5 else left / 2
        widths.append(w)
        left -= w
    return widths


def _fill_block(rng, style: CityStyle, r: _Raster, table: BuildingTable, bx0, bx1, by0, by1) -> None:
    if rng.random() < 0.06 and (bx1 - bx0) < 80 and (by1 - by0) < 80:
        r.rect(r.ground, bx0, bx1, by0, by1, G_GRASS)
        table.parks.append((bx0, bx1, by0, by1))
        return
    depth = float(min(rng.uniform(9, 15), (bx1 - bx0) / 2, (by1 - by0) / 2))
    gap_prob = 0.25 if style.name == "Bergen" else 0.05
    if rng.random() < 0.5 and bx1 - bx0 > 2 * depth + 2 and by1 - by0 > 2 * depth + 2:
        box = tuple(round(v / RES) * RES for v in (bx0 + depth, bx1 - depth, by0 + depth, by1 - depth))
        bid = table.add(sample_building(rng, style, box))
        r.rect(r.building, *box, bid)
    rows = (
        ("n", bx0, bx1), ("s", bx0, bx1), ("w", by0 + depth, by1 - depth), ("e", by0 + depth, by1 - depth),
    )
    for side, a0, a1 in rows:
        if a1 - a0 < 1:
            continue
        a = a0
        for w in _split(rng, a1 - a0, *style.lot_width):
            lo, hi = a, a + w
            a += w
            if rng.random() < gap_prob and w > style.lot_width[0]:
                hi -= rng.uniform(1.0, 1.6)
            if rng.random() < 0.03:
                continue  # an empty lot: a small paved square
            s = rng.uniform(0.2, 1.0) if rng.random() < 0.35 else 0.0
            if side == "n":
                box = (lo, hi, by1 - depth, by1 - s)
            elif side == "s":
                box = (lo, hi, by0 + s, by0 + depth)
            elif side == "w":
                box = (bx0 + s, bx0 + depth, lo, hi)
            else:
                box = (bx1 - depth, bx1 - s, lo, hi)
            if box[1] - box[0] < 1.5 or box[3] - box[2] < 1.5:
                continue
            box = tuple(round(v / RES) * RES for v in box)
            bid = table.add(sample_building(rng, style, box))
            r.rect(r.building, *box, bid)


def _place_thin(rng, style: CityStyle, r: _Raster, segments: list[Segment], half_w: dict,
                parks: list) -> ThinObjects:
    objs: list[tuple[float, float, float, float, int]] = []
    tree_kind = TREES.index(style.tree)
    for seg in segments:
        if seg.sidewalk < 1.2:
            continue
        other = "x" if seg.axis == "y" else "y"
        a0 = seg.start + half_w.get((other, seg.start), 0.0) + 3.0
        a1 = seg.end - half_w.get((other, seg.end), 0.0) - 3.0
        kerb = seg.road_half + 0.6
        for side in (-1, 1):
            for a in np.arange(a0 + rng.uniform(0, style.tree_spacing), a1, style.tree_spacing):
                if rng.random() > style.tree_prob:
                    continue
                radius = min(rng.uniform(1.6, 2.6), kerb - 1.9)
                if radius < 1.0:
                    continue
                x, y = seg.point(a + rng.uniform(-1, 1), side * kerb)
                height = rng.uniform(5.5, 8.5) if style.tree != "palm" else rng.uniform(7, 10)
                objs.append((float(x), float(y), float(radius), float(height), tree_kind))
            for a in np.arange(a0 + (6.0 if side > 0 else 17.0), a1, 22.0):
                x, y = seg.point(a, side * (seg.road_half + 0.35))
                if style.pole == "utility":
                    objs.append((float(x), float(y), 1.1, float(rng.uniform(8.0, 9.5)), UTILITY))
                else:
                    objs.append((float(x), float(y), 1.1, float(rng.uniform(5.5, 7.0)), LAMP))
    for bx0, bx1, by0, by1 in parks:
        for x in np.arange(bx0 + 4.0, bx1 - 3.0, 7.0):
            for y in np.arange(by0 + 4.0, by1 - 3.0, 7.0):
                if rng.random() < 0.7:
                    objs.append((float(x + rng.uniform(-1.5, 1.5)), float(y + rng.uniform(-1.5, 1.5)),
                                 float(rng.uniform(1.8, 2.8)), float(rng.uniform(6, 9)), tree_kind))
    arr = np.array(objs, dtype=np.float64).reshape(-1, 5)
    thin = ThinObjects(arr[:, 0].astype(np.float32), arr[:, 1].astype(np.float32),
                       arr[:, 2].astype(np.float32), arr[:, 3].astype(np.float32),
                       arr[:, 4].astype(np.int8),
                       rng.integers(0, 2**31, size=len(arr)).astype(np.uint32))
    for k in range(len(arr)):
        x, y, rad = arr[k, 0], arr[k, 1], arr[k, 2]
        i0, i1 = r.idx(x - rad), r.idx(x + rad)
        j0, j1 = r.idx(y - rad), r.idx(y + rad)
        cx = (np.arange(i0, i1) + 0.5) * RES - HALF
        cy = (np.arange(j0, j1) + 0.5) * RES - HALF
        inside = (cx[:, None] - x) ** 2 + (cy[None, :] - y) ** 2 <= rad * rad
        view = r.thin[i0:i1, j0:j1]
        view[inside & (r.building[i0:i1, j0:j1] == 0)] = k
    return thin
