"""Vectorized ray caster: street-level perspective views of a :class:`CityMap`.

All columns of all views of a batch are cast at once (:mod:`.raycast`): per column, a 2-D ray
gives the distance, building id and facade coordinate ``u`` of the wall it hits, and a second
march finds trees and lamp posts in front of the wall. Per pixel, the row's elevation decides between
facade (perspective-correct height ``z``), ground (road, paint, sidewalk) and sky; then thin
objects, lighting, haze, weather, occluders and sensor noise are applied.
Headings are compass degrees (0 = north, 90 = east); pitch is positive upwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from progeo.data.synthetic.cities import glyph_set
from progeo.data.synthetic.citymap import LAMP, CityMap
from progeo.data.synthetic.conditions import Conditions, lighting
from progeo.data.synthetic.environment import shade_ground, shade_sky, weather_overlay
from progeo.data.synthetic.facade import facade_top, palette, resolve, shade_facade
from progeo.data.synthetic.noise import hash_rows, hash_u32
from progeo.data.synthetic.objects import lamp_light, lamps_near, shade_thin
from progeo.data.synthetic.occluders import KIND_NAMES, Occluders, draw_occluders
from progeo.data.synthetic.raycast import CHUNKS, march, refine_hit

THIN_MAX = 70.0
FAR = 1e5
_GLYPHS: dict[str, np.ndarray] = {}


def _glyphs(family: str) -> np.ndarray:
    if family not in _GLYPHS:
        _GLYPHS[family] = glyph_set(family)
    return _GLYPHS[family]


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


def render_batch(cmap: CityMap, cams: list[Camera], cond: Conditions | None = None, size: int = 128,
                 seed: int = 0, occluders: Occluders | None = None):
    """Render ``cams`` under ``cond``; returns uint8 images (N, size, size, 3) and ViewInfos."""
    cond = cond or Conditions()
    light = lighting(cond)
    S, N = int(size), len(cams)
    C = N * S
    T = cmap.buildings
    view = np.repeat(np.arange(N), S)
    col = np.tile(np.arange(S, dtype=np.float32), N)
    f_view = np.array([(S / 2) / math.tan(math.radians(c.fov) / 2) for c in cams], np.float32)
    fc = f_view[view]
    theta = np.arctan((col + 0.5 - S / 2) / fc)
    phi = np.radians(np.array([c.heading for c in cams], np.float32))[view] + theta
    dx, dy = np.sin(phi).astype(np.float32), np.cos(phi).astype(np.float32)
    ox = np.array([c.x for c in cams], np.float32)[view]
    oy = np.array([c.y for c in cams], np.float32)[view]
    cam_h = np.array([c.height for c in cams], np.float32)[view]
    cos_t = np.cos(theta)

    t_s, cell, step = march(cmap.building, cmap.half, cmap.res, ox, oy, dx, dy, CHUNKS[-1][1], 0)
    hit = cell >= 0
    t_hit, cell, xface = refine_hit(cmap.building, t_s, step, np.maximum(cell, 0), cmap.half, cmap.res,
                                    ox, oy, dx, dy)
    bid = np.where(hit, cmap.building.reshape(-1)[cell], 0)
    t_hit = np.where(hit, t_hit, np.inf)
    hx, hy = ox + t_hit * dx, oy + t_hit * dy
    u = np.where(xface, hy - T.y0[bid], hx - T.x0[bid])
    w = np.where(xface, T.y1[bid] - T.y0[bid], T.x1[bid] - T.x0[bid])
    u = np.where(hit, u, 0.0).astype(np.float32)
    nx = np.where(xface, -np.sign(dx), 0.0)
    ny = np.where(xface, 0.0, -np.sign(dy))
    depth_w = np.where(hit, t_hit * cos_t, FAR).astype(np.float32)
    top = np.where(hit, facade_top(T, bid, u, w), -1.0)

    rows = (S / 2 - np.arange(S, dtype=np.float32) - 0.5)[:, None]
    vp = rows / fc[None, :]
    tp = np.tan(np.radians(np.array([c.pitch for c in cams], np.float32)))[view]
    v = (vp + tp) / (1 - vp * tp) if np.any(tp != 0) else vp
    z = cam_h + v * depth_w
    wall = hit & (z >= 0) & (z < top)
    grd = ~wall & (v < 0)
    depth = np.where(wall, depth_w, np.float32(0.0))

    # Facades (computed for the whole frame, column-wise), lit by ambient light, the sun on
    # faces turned to it, and street lamps at night.
    glyphs = _glyphs(cmap.style.glyphs)
    slot, shade, emission, sign = shade_facade(T, glyphs, cond.year, bid, u, w, depth_w / fc, z,
                                               light.emit > 0)
    table = palette(T, bid, cond.year)
    lam = np.clip(nx * light.sun_dir[0] + ny * light.sun_dir[1], 0, 1) * math.cos(light.sun_elev)
    shade_col = light.ambient[None, :] + light.sun[None, :] * lam[:, None]
    zc = np.clip(z, 0.0, 50.0)
    shade *= 1.0 - 0.35 * np.exp(zc * np.float32(-1.6))  # darker (and dirtier) at the foot of walls
    table = table * shade_col[:, None, :]
    img = resolve(table, slot)  # channel-first (3, rows, columns): fast per-pixel broadcasts
    img *= shade
    lamp_pos = lamps_near(cmap, cams) if light.lamps else None
    if lamp_pos is not None:
        img += resolve(palette(T, bid, cond.year), slot) * (shade * lamp_light(lamp_pos, hx[None], hy[None], zc))
    if emission is not None:
        eslot, estr = emission
        img += resolve(palette(T, bid, cond.year), eslot) * (estr * np.float32(light.emit))

    flat_img = img.reshape(3, -1)
    flat_depth = depth.reshape(-1)
    v_flat = v.reshape(-1) if v.shape == (S, C) else np.broadcast_to(v, (S, C)).reshape(-1)

    # Ground.
    pg = np.flatnonzero(grd)
    cg = pg % C
    dg = cam_h[cg] / -v_flat[pg]
    tg = dg / cos_t[cg]
    gx, gy = ox[cg] + tg * dx[cg], oy[cg] + tg * dy[cg]
    ground_rgb = shade_ground(cmap, gx, gy, dg / fc[cg], cond, light)
    g_lit = light.ambient + light.sun * math.sin(light.sun_elev)
    if lamp_pos is not None:
        ground_rgb *= g_lit + lamp_light(lamp_pos, gx, gy, np.zeros_like(gx))[:, None]
    else:
        ground_rgb *= g_lit
    if light.wet > 0 and not cond.snow:  # wet asphalt mirrors the sky a little
        ground_rgb += 0.12 * light.horizon
    flat_img[:, pg] = ground_rgb.T
    flat_depth[pg] = dg

    # Sky.
    ps = np.flatnonzero(~wall & ~grd)
    cs = ps % C
    flat_img[:, ps] = shade_sky(phi[cs], v_flat[ps], cond, light, seed % 9973).T

    # Trees and lamp posts in front of the walls.
    t_thin, tcell, _ = march(cmap.thin, cmap.half, cmap.res, ox, oy, dx, dy, THIN_MAX, -1, t_limit=t_hit)
    tcols = np.nonzero((tcell >= 0) & (t_thin < t_hit))[0]
    tree_px = np.zeros(N)
    lamp_px = np.zeros(N)
    if tcols.size:
        k = cmap.thin.reshape(-1)[tcell[tcols]]
        obj = cmap.thin_objs
        rx, ry = obj.x[k] - ox[tcols], obj.y[k] - oy[tcols]
        along = rx * dx[tcols] + ry * dy[tcols]
        lateral = rx * dy[tcols] - ry * dx[tcols]
        dc = np.maximum(along * cos_t[tcols], 0.3)
        zt = cam_h[tcols] + v[:, tcols] * dc
        rr, jj, alb, em, glow = shade_thin(obj, k, lateral, dc / fc[tcols], zt, cond.season, cond.snow,
                                           light.lamps)
        pt = rr * C + tcols[jj]
        t_lit = light.ambient + light.sun * 0.6
        if lamp_pos is not None:
            t_lit = t_lit + lamp_light(lamp_pos, obj.x[k[jj]], obj.y[k[jj]], np.clip(zt[rr, jj], 0, 50))[:, None] * 0.7
        rgb = alb * t_lit
        if em is not None:
            rgb += em * np.float32(light.emit)
        flat_img[:, pt] = rgb.T
        flat_depth[pt] = dc[jj]
        if glow is not None:
            img[:, :, tcols] += glow[None] * np.array([1.0, 0.85, 0.55], np.float32)[:, None, None]
        per_col = np.bincount(jj, minlength=tcols.size)
        is_lamp = obj.kind[k] >= LAMP
        np.add.at(lamp_px, view[tcols[is_lamp]], per_col[is_lamp])
        np.add.at(tree_px, view[tcols[~is_lamp]], per_col[~is_lamp])
        wall.reshape(-1)[pt] = False
        sign.reshape(-1)[pt] = False

    # Haze / fog by distance (sky pixels have depth 0: unchanged), and exposure to 0..255.
    gain = np.float32(255.0 * cond.exposure)
    fogf = np.exp(depth * np.float32(-1.0 / light.haze_dist))
    fogf *= gain
    img -= light.haze[:, None, None]
    img *= fogf
    img += (light.haze * gain)[:, None, None]
    # Sensor noise (and +0.5 for rounding): one random table lookup per pixel.
    img += hash_rows(hash_u32(np.arange(C), seed % 2**31, 3), np.arange(S, dtype=np.int32)[:, None]) * 9.0 - 4.0

    # Per-view (rows, columns, 3) views of the channel-first frame, for occluders and weather.
    views = img.reshape(3, S, N, S).transpose(2, 1, 3, 0)
    infos = _infos(N, S, view, bid, wall, sign & wall, cs, tree_px, lamp_px)
    occ = occluders if occluders is not None else Occluders.empty()
    if len(occ):
        depths = depth.reshape(S, N, S).transpose(1, 0, 2)
        depths[depths == 0] = FAR
        occ_rgb = (light.ambient + light.sun * 0.7) * gain
        for i, cam in enumerate(cams):
            kinds = draw_occluders(views[i], depths[i], cam, float(f_view[i]), occ, occ_rgb, light.lamps, gain)
            infos[i].occluders = [KIND_NAMES[k] for k in kinds]
    weather_overlay(views, cond, seed)
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).reshape(3, S, N, S).transpose(2, 1, 3, 0)), infos


def _infos(N, S, view, bid, wall, sign, cs, tree_px, lamp_px) -> list[ViewInfo]:
    npx = float(S * S)
    wall_col = wall.sum(0)
    wall_px = np.bincount(view, weights=wall_col, minlength=N)
    sign_px = np.bincount(view, weights=sign.sum(0), minlength=N)
    sky_px = np.bincount(view[cs], minlength=N)
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
