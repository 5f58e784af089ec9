"""Trees and lamp posts (billboards hit by the ray caster), shaded per pixel.

A ray that crosses a thin object's disc on the map reports the object and its lateral offset
``l`` from the object's axis; the object's silhouette is then a function of ``(l, z)``: trunk,
round / conical / palm crown, lamp pole and head. Foliage follows the season (blossom in
spring, orange and red in autumn, bare branches in winter, snow on the crowns).
"""

from __future__ import annotations

import numpy as np

from progeo.data.synthetic.cities import TREES
from progeo.data.synthetic.citymap import LAMP, UTILITY, CityMap, ThinObjects
from progeo.data.synthetic.noise import hash_rows, hash_u32

T = {name: i for i, name in enumerate(TREES)}
FOLIAGE = {  # (kind, season) -> rgb; None = bare branches
    "round": {"spring": (0.42, 0.6, 0.22), "summer": (0.2, 0.38, 0.14), "autumn": (0.78, 0.48, 0.14),
              "winter": None},
    "blossom": {"spring": (0.96, 0.74, 0.82), "summer": (0.22, 0.42, 0.16), "autumn": (0.72, 0.26, 0.14),
                "winter": None},
    "orange": {s: (0.16, 0.34, 0.14) for s in ("spring", "summer", "autumn", "winter")},
    "conifer": {s: (0.1, 0.24, 0.14) for s in ("spring", "summer", "autumn", "winter")},
    "palm": {s: (0.25, 0.42, 0.18) for s in ("spring", "summer", "autumn", "winter")},
}
BARK = np.array([0.32, 0.24, 0.16], dtype=np.float32)
LAMP_GREY = np.array([0.2, 0.21, 0.23], dtype=np.float32)
CONCRETE = np.array([0.58, 0.58, 0.55], dtype=np.float32)
LAMP_LIGHT = np.array([1.0, 0.88, 0.6], dtype=np.float32)
SNOW = np.array([0.93, 0.94, 0.97], dtype=np.float32)
FRUIT = np.array([0.95, 0.55, 0.1], dtype=np.float32)


def foliage_colour(kind: str, season: str):
    c = FOLIAGE[kind][season]
    return None if c is None else np.array(c, dtype=np.float32)


BARK_, CROWN_, FRUIT_, SNOW_, LAMP_, BULB_, POLE_ = range(7)


def shade_thin(objs: ThinObjects, k, l, px, z, season: str, snow: bool, night: bool):
    """Silhouette test and colour of thin objects, column-wise.

    ``k``, ``l``, ``px`` are per column (object id, lateral offset of the ray from the object's
    axis, metres per pixel); ``z`` is the height of each pixel at the object, (rows, columns).
    Returns ``(rows, cols, rgb, emit, glow)``: the covered pixels, their albedo (and emitted
    light at night, else None) and an additive halo around lit lamp heads ((rows, columns) or None).
    """
    kind, R, Ht, seed = objs.kind[k], objs.radius[k], objs.height[k], objs.seed[k]
    mask = np.zeros(z.shape, dtype=bool)
    part = np.zeros(z.shape, dtype=np.int8)
    shade = np.ones(z.shape, dtype=np.float32)
    crown_rgb = np.zeros((k.size, 3), dtype=np.float32)
    glow = None
    fine = np.clip(1.6 - 2.0 * px / 0.2, 0.0, 1.0)
    for name, ki in T.items():
        sel = np.nonzero(kind == ki)[0]
        if sel.size == 0:
            continue
        ll, zz, rr, hh, fn, ss = l[sel], z[:, sel], R[sel], Ht[sel], fine[sel], seed[sel]
        lf = hash_rows(hash_u32(ll * 5.0 + 64, ss), zz * 5.0)
        if name == "conifer":
            trunk_top = np.full_like(hh, 1.2)
            rel = np.clip((hh - zz) / np.maximum(hh - 1.0, 0.5), 0.0, 1.0)
            tier = 0.78 + 0.22 * ((zz / 1.1) % 1.0)
            crown = (zz > 1.0) & (zz < hh) & (np.abs(ll) < rr * rel * tier)
        elif name == "palm":
            trunk_top = hh - 0.4
            dz = (zz - hh) * 1.5
            d2 = ll ** 2 + dz ** 2
            ang = np.arctan2(dz, np.broadcast_to(ll, dz.shape))
            crown = (d2 < rr ** 2) & ((np.sin(ang * 9.0 + (ss % 7)) > -0.1) | (d2 < 0.3))
        else:
            trunk_top = np.maximum(0.42 * hh, 2.2)
            cz = (trunk_top - 0.6 + hh) / 2
            hz = (hh - trunk_top + 0.6) / 2
            ragged = 0.8 + 0.2 * hash_rows(hash_u32(ll * 2.5 + 64, ss, 1), zz * 2.5)
            crown = (ll / rr) ** 2 + ((zz - cz) / hz) ** 2 < ragged
        trunk = (np.abs(ll) < (0.2 if name == "palm" else 0.14)) & (zz >= 0) & (zz < trunk_top)
        colour = foliage_colour(name, season)
        p = np.where(crown, CROWN_, BARK_).astype(np.int8)
        if colour is None:  # bare winter branches
            crown &= lf < 0.3
            crown_rgb[sel] = BARK * 0.9
            sh = np.ones_like(zz)
        else:
            crown_rgb[sel] = colour
            up = np.clip((zz - trunk_top) / np.maximum(hh - trunk_top, 1), 0, 1)
            sh = 0.72 + 0.5 * (lf - 0.5) * fn + 0.15 * up
            if name == "orange":
                p[crown & (hash_rows(hash_u32(ll * 9.0 + 64, ss, 2), zz * 9.0) < 0.07) & (fn > 0.5)] = FRUIT_
        if snow:
            p[crown & (hash_rows(hash_u32(ll * 4.0 + 64, ss, 5), zz * 4.0) < 0.45)] = SNOW_
        sh = np.where(crown, sh, 0.8 + 0.3 * lf)
        mask[:, sel] = crown | trunk
        part[:, sel] = p
        shade[:, sel] = sh
    lamp = np.nonzero(kind == LAMP)[0]
    if lamp.size:
        ll, zz, hh = l[lamp], z[:, lamp], Ht[lamp]
        pole = (np.abs(ll) < 0.08) & (zz >= 0) & (zz < hh)
        head = (np.abs(ll) < 0.32) & (zz > hh - 0.3) & (zz < hh + 0.05)
        mask[:, lamp] = pole | head
        part[:, lamp] = np.where(head & (zz < hh - 0.17), BULB_, LAMP_)
        if night:
            glow = np.zeros(z.shape, dtype=np.float32)
            glow[:, lamp] = np.exp(-(ll ** 2 + (zz - (hh - 0.2)) ** 2) / 0.25) * 0.9
    util = np.nonzero(kind == UTILITY)[0]
    if util.size:
        ll, zz, hh = l[util], z[:, util], Ht[util]
        pole = (np.abs(ll) < 0.13) & (zz >= 0) & (zz < hh)
        arm = (np.abs(ll) < 0.75) & (zz > hh - 0.9) & (zz < hh - 0.75)
        box = (np.abs(ll) < 0.3) & (zz > hh - 2.6) & (zz < hh - 1.8)
        mask[:, util] = pole | arm | box
        part[:, util] = POLE_
    rows, cols = np.nonzero(mask)
    p = part[rows, cols]
    table = np.stack([np.broadcast_to(BARK, crown_rgb.shape), crown_rgb,
                      np.broadcast_to(FRUIT, crown_rgb.shape), np.broadcast_to(SNOW, crown_rgb.shape),
                      np.broadcast_to(LAMP_GREY, crown_rgb.shape), np.broadcast_to(LAMP_GREY, crown_rgb.shape),
                      np.broadcast_to(CONCRETE, crown_rgb.shape)], 1)
    rgb = table[cols, p] * shade[rows, cols][:, None]
    emit = None
    if night:
        emit = np.where((p == BULB_)[:, None], LAMP_LIGHT * 2.0, 0.0).astype(np.float32)
    return rows, cols, rgb, emit, glow


def lamps_near(cmap: CityMap, cams, radius: float = 45.0, limit: int = 10):
    """(x, y, height) of the lit street lamps nearest to the cameras, or None."""
    obj = cmap.thin_objs
    sel = np.nonzero(obj.kind == LAMP)[0]
    cx = np.mean([c.x for c in cams])
    cy = np.mean([c.y for c in cams])
    d2 = (obj.x[sel] - cx) ** 2 + (obj.y[sel] - cy) ** 2
    near = sel[np.argsort(d2)[:limit]]
    near = near[(obj.x[near] - cx) ** 2 + (obj.y[near] - cy) ** 2 < radius ** 2]
    return np.stack([obj.x[near], obj.y[near], obj.height[near]], 1) if near.size else None


def lamp_light(lamps, x, y, z):
    """Light that ``lamps`` shed on points (x, y, z) (broadcast)."""
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.float32)
    for lx, ly, lz in lamps:
        d2 = (x - lx) ** 2 + (y - ly) ** 2 + (z - lz) ** 2
        out += 0.55 / (1.0 + d2 / 10.0)
    return out
