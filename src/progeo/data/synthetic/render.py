"""Vectorized ray caster: street-level perspective views of a :class:`CityMap`.

All columns of all views of a batch are cast at once (:mod:`.raycast`): per column, a 2-D ray
gives the distance, building id and facade coordinate ``u`` of the wall it hits, and a second
march finds trees and lamp posts in front of the wall. Per pixel, the row's elevation decides
between facade (perspective-correct height ``z``), ground (road, paint, sidewalk) and sky; then
thin objects, lighting, haze, sensor noise, occluders and weather are applied. The frame is
channel-first, (3, rows, views x columns), so per-pixel factors broadcast cheaply.
Headings are compass degrees (0 = north, 90 = east); pitch is positive upwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from progeo.data.synthetic.cities import glyph_set
from progeo.data.synthetic.citymap import LAMP, CityMap
from progeo.data.synthetic.conditions import Conditions, Lighting, lighting
from progeo.data.synthetic.environment import shade_ground, shade_sky, weather_overlay
from progeo.data.synthetic.facade import facade_top, palette, resolve, shade_facade
from progeo.data.synthetic.noise import hash_rows, hash_u32
from progeo.data.synthetic.objects import lamp_light, lamps_near, shade_thin
from progeo.data.synthetic.occluders import KIND_NAMES, Occluders, draw_occluders
from progeo.data.synthetic.raycast import CHUNKS, march, refine_hit

THIN_MAX = 70.0
FAR = 1e5
_GLYPHS: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class Camera:
    x: float
    y: float
    heading: float
    pitch: float = 0.0
    fov: float = 75.0
    height: float = 2.5


@dataclass
class ViewInfo:
    """What one view shows, for captions: building ids by visible area, and area shares."""

    buildings: list[int] = field(default_factory=list)
    wall: float = 0.0
    sky: float = 0.0
    trees: float = 0.0
    signs: float = 0.0
    lamps: float = 0.0
    occluders: list[str] = field(default_factory=list)


@dataclass
class _Frame:
    """Per-column rays of a batch (arrays of length views x size) and the per-pixel buffers."""

    S: int
    N: int
    view: np.ndarray
    f: np.ndarray
    ox: np.ndarray
    oy: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    phi: np.ndarray
    cos_t: np.ndarray
    cam_h: np.ndarray
    v: np.ndarray  # (rows, columns) elevation slope of each pixel
    img: np.ndarray | None = None  # (3, rows, columns)
    depth: np.ndarray | None = None  # (rows, columns); 0 for the sky

    @property
    def C(self) -> int:
        return self.N * self.S


def _rays(cams: list[Camera], S: int) -> _Frame:
    N = len(cams)
    view = np.repeat(np.arange(N), S)
    col = np.tile(np.arange(S, dtype=np.float32), N)
    f_view = np.array([(S / 2) / math.tan(math.radians(c.fov) / 2) for c in cams], np.float32)
    f = f_view[view]
    theta = np.arctan((col + 0.5 - S / 2) / f)
    phi = np.radians(np.array([c.heading for c in cams], np.float32))[view] + theta
    vp = (S / 2 - np.arange(S, dtype=np.float32) - 0.5)[:, None] / f[None, :]
    tp = np.tan(np.radians(np.array([c.pitch for c in cams], np.float32)))[view]
    v = (vp + tp) / (1 - vp * tp)
    def per_col(values):
        return np.array(values, np.float32)[view]

    return _Frame(S, N, view, f, per_col([c.x for c in cams]), per_col([c.y for c in cams]),
                  np.sin(phi).astype(np.float32), np.cos(phi).astype(np.float32), phi, np.cos(theta),
                  per_col([c.height for c in cams]), v)


def render_batch(cmap: CityMap, cams: list[Camera], cond: Conditions | None = None, size: int = 128,
                 seed: int = 0, occluders: Occluders | None = None):
    """Render ``cams`` under ``cond``; returns uint8 images (N, size, size, 3) and ViewInfos."""
    cond = cond or Conditions()
    light = lighting(cond)
    fr = _rays(cams, int(size))
    T = cmap.buildings
    t_s, cell, step = march(cmap.building, cmap.half, cmap.res, fr.ox, fr.oy, fr.dx, fr.dy, CHUNKS[-1][1], 0)
    hit = cell >= 0
    t_hit, cell, xface = refine_hit(cmap.building, t_s, step, np.maximum(cell, 0), cmap.half, cmap.res,
                                    fr.ox, fr.oy, fr.dx, fr.dy)
    bid = np.where(hit, cmap.building.reshape(-1)[cell], 0)
    t_hit = np.where(hit, t_hit, np.inf)
    hx, hy = fr.ox + t_hit * fr.dx, fr.oy + t_hit * fr.dy
    u = np.where(hit, np.where(xface, hy - T.y0[bid], hx - T.x0[bid]), 0.0).astype(np.float32)
    w = np.where(xface, T.y1[bid] - T.y0[bid], T.x1[bid] - T.x0[bid])
    depth_w = np.where(hit, t_hit * fr.cos_t, FAR).astype(np.float32)
    z = fr.cam_h + fr.v * depth_w
    wall = hit & (z >= 0) & (z < np.where(hit, facade_top(T, bid, u, w), -1.0))
    ground = ~wall & (fr.v < 0)
    fr.depth = np.where(wall, depth_w, np.float32(0.0))
    lamps = lamps_near(cmap, cams) if light.lamps else None

    # Facades (computed for the whole frame, column-wise), lit by ambient light, the sun on faces
    # turned to it, and street lamps at night.
    if cmap.style.glyphs not in _GLYPHS:
        _GLYPHS[cmap.style.glyphs] = glyph_set(cmap.style.glyphs)
    slot, shade, emission, sign = shade_facade(T, _GLYPHS[cmap.style.glyphs], cond.year, bid, u, w,
                                               depth_w / fr.f, z, light.emit > 0)
    colours = palette(T, bid, cond.year)
    nx, ny = np.where(xface, -np.sign(fr.dx), 0.0), np.where(xface, 0.0, -np.sign(fr.dy))
    lam = np.clip(nx * light.sun_dir[0] + ny * light.sun_dir[1], 0, 1) * math.cos(light.sun_elev)
    zc = np.clip(z, 0.0, 50.0)
    shade *= 1.0 - 0.35 * np.exp(zc * np.float32(-1.6))  # darker (and dirtier) at the foot of walls
    fr.img = resolve(colours * (light.ambient + light.sun * lam[:, None])[:, None, :], slot)
    fr.img *= shade
    if lamps is not None:
        fr.img += resolve(colours, slot) * (shade * lamp_light(lamps, hx[None], hy[None], zc))
    if emission is not None:
        fr.img += resolve(colours, emission[0]) * (emission[1] * np.float32(light.emit))

    _draw_ground(fr, cmap, np.flatnonzero(ground), cond, light, lamps)
    sky = np.flatnonzero(~wall & ~ground)
    fr.img.reshape(3, -1)[:, sky] = shade_sky(fr.phi[sky % fr.C], fr.v.reshape(-1)[sky], cond, light,
                                              seed % 9973).T
    tree_px, lamp_px = _draw_thin(fr, cmap, t_hit, cond, light, lamps, (wall, sign))
    infos = _infos(fr, bid, wall, sign & wall, sky % fr.C, tree_px, lamp_px)
    return _finish(fr, cams, cond, light, seed, occluders, infos), infos


def _draw_ground(fr: _Frame, cmap: CityMap, pg, cond: Conditions, light: Lighting, lamps) -> None:
    cg = pg % fr.C
    dg = fr.cam_h[cg] / -fr.v.reshape(-1)[pg]
    tg = dg / fr.cos_t[cg]
    gx, gy = fr.ox[cg] + tg * fr.dx[cg], fr.oy[cg] + tg * fr.dy[cg]
    rgb = shade_ground(cmap, gx, gy, dg / fr.f[cg], cond, light)
    lit = light.ambient + light.sun * math.sin(light.sun_elev)
    rgb *= lit if lamps is None else lit + lamp_light(lamps, gx, gy, np.zeros_like(gx))[:, None]
    if light.wet > 0 and not cond.snow:  # wet asphalt mirrors the sky a little
        rgb += 0.12 * light.horizon
    fr.img.reshape(3, -1)[:, pg] = rgb.T
    fr.depth.reshape(-1)[pg] = dg


def _draw_thin(fr: _Frame, cmap: CityMap, t_hit, cond: Conditions, light: Lighting, lamps, masks):
    """Trees and lamp posts in front of the walls; returns their pixel counts per view."""
    tree_px, lamp_px = np.zeros(fr.N), np.zeros(fr.N)
    t_thin, tcell, _ = march(cmap.thin, cmap.half, cmap.res, fr.ox, fr.oy, fr.dx, fr.dy, THIN_MAX, -1,
                             t_limit=t_hit)
    tcols = np.nonzero((tcell >= 0) & (t_thin < t_hit))[0]
    if tcols.size == 0:
        return tree_px, lamp_px
    k = cmap.thin.reshape(-1)[tcell[tcols]]
    obj = cmap.thin_objs
    rx, ry = obj.x[k] - fr.ox[tcols], obj.y[k] - fr.oy[tcols]
    lateral = rx * fr.dy[tcols] - ry * fr.dx[tcols]
    dc = np.maximum((rx * fr.dx[tcols] + ry * fr.dy[tcols]) * fr.cos_t[tcols], 0.3)
    zt = fr.cam_h[tcols] + fr.v[:, tcols] * dc
    rr, jj, albedo, emit, glow = shade_thin(obj, k, lateral, dc / fr.f[tcols], zt, cond.season, cond.snow,
                                            light.lamps)
    pt = rr * fr.C + tcols[jj]
    lit = light.ambient + light.sun * 0.6
    if lamps is not None:
        lit = lit + lamp_light(lamps, obj.x[k[jj]], obj.y[k[jj]], np.clip(zt[rr, jj], 0, 50))[:, None] * 0.7
    rgb = albedo * lit
    if emit is not None:
        rgb += emit * np.float32(light.emit)
    fr.img.reshape(3, -1)[:, pt] = rgb.T
    fr.depth.reshape(-1)[pt] = dc[jj]
    if glow is not None:
        fr.img[:, :, tcols] += glow[None] * np.array([1.0, 0.85, 0.55], np.float32)[:, None, None]
    per_col = np.bincount(jj, minlength=tcols.size)
    is_lamp = obj.kind[k] >= LAMP
    np.add.at(lamp_px, fr.view[tcols[is_lamp]], per_col[is_lamp])
    np.add.at(tree_px, fr.view[tcols[~is_lamp]], per_col[~is_lamp])
    for m in masks:  # what trees hide is no longer wall / sign
        m.reshape(-1)[pt] = False
    return tree_px, lamp_px


def _finish(fr: _Frame, cams, cond: Conditions, light: Lighting, seed: int, occluders, infos) -> np.ndarray:
    """Haze, exposure, sensor noise, occluders and weather; returns uint8 (N, S, S, 3)."""
    S, N, img = fr.S, fr.N, fr.img
    gain = np.float32(255.0 * cond.exposure)
    fog = np.exp(fr.depth * np.float32(-1.0 / light.haze_dist))  # sky: depth 0, unchanged
    fog *= gain
    img -= light.haze[:, None, None]
    img *= fog
    img += (light.haze * gain)[:, None, None]
    # Sensor noise (and +0.5 for rounding): one random table lookup per pixel.
    img += hash_rows(hash_u32(np.arange(fr.C), seed % 2**31, 3), np.arange(S, dtype=np.int32)[:, None]) * 9.0 - 4.0
    views = img.reshape(3, S, N, S).transpose(2, 1, 3, 0)  # per-view (rows, columns, 3) views
    occ = occluders if occluders is not None else Occluders.empty()
    if len(occ):
        depths = fr.depth.reshape(S, N, S).transpose(1, 0, 2)
        depths[depths == 0] = FAR
        occ_rgb = (light.ambient + light.sun * 0.7) * gain
        for i, cam in enumerate(cams):
            kinds = draw_occluders(views[i], depths[i], cam, float(fr.f[i * S]), occ, occ_rgb, light.lamps, gain)
            infos[i].occluders = [KIND_NAMES[k] for k in kinds]
    weather_overlay(views, cond, seed)
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).reshape(3, S, N, S).transpose(2, 1, 3, 0))


def _infos(fr: _Frame, bid, wall, sign, sky_cols, tree_px, lamp_px) -> list[ViewInfo]:
    S, N = fr.S, fr.N
    npx = float(S * S)
    wall_col = wall.sum(0)
    wall_px = np.bincount(fr.view, weights=wall_col, minlength=N)
    sign_px = np.bincount(fr.view, weights=sign.sum(0), minlength=N)
    sky_px = np.bincount(fr.view[sky_cols], minlength=N)
    infos = []
    for i in range(N):
        sl = slice(i * S, (i + 1) * S)
        per_b = np.bincount(bid[sl], weights=wall_col[sl])
        per_b[0] = 0
        order = np.argsort(-per_b, kind="stable")[:3]
        infos.append(ViewInfo(
            buildings=[int(j) for j in order if per_b[j] > 0.04 * npx],
            wall=wall_px[i] / npx, sky=sky_px[i] / npx, trees=tree_px[i] / npx,
            signs=sign_px[i] / npx, lamps=lamp_px[i] / npx,
        ))
    return infos
