"""Facade shading: material texture, window grid, shop front with sign, cornice and roof line.

Works column-wise on a whole frame: per image column the hit building ``b``, the coordinate
``u`` along the facade (metres from the footprint corner), the facade width ``w`` and ``px``
(metres covered by one pixel, used to fade patterns finer than a pixel); per pixel the height
``z`` above the street, shape (rows, columns). What depends only on the column (the bay, the
glyph of a sign, the material) is computed once per column and broadcast over rows.

For speed, pixels carry a colour *slot* and a scalar brightness instead of RGB: a slot names
one of the column's colours (facade, trim, shutters, sign...) or a constant (glass, iron...);
:func:`resolve` turns slots into RGB once at the end.
"""

from __future__ import annotations

import numpy as np

from progeo.data.synthetic.buildings import BuildingTable
from progeo.data.synthetic.cities import COLOUR_RGB, MATERIALS, ROOFS, WINDOWS, colour_index
from progeo.data.synthetic.noise import hash_rows, hash_u32

M = {name: i for i, name in enumerate(MATERIALS)}
R = {name: i for i, name in enumerate(ROOFS)}
W = {name: i for i, name in enumerate(WINDOWS)}
MARGIN = 0.6  # plain wall at both ends of a facade
BASE, TRIM, SHUTTER, SIGN_BG, SIGN_FG, ROOF, DOOR = range(7)
GLASS, CURTAIN, WOOD, IRON, INTERIOR, WHITE, WARM = range(7, 14)
CONSTANTS = np.array([
    (0.2, 0.24, 0.3), (0.62, 0.58, 0.52), tuple(COLOUR_RGB[colour_index("dark wood")] * 1.1),
    (0.09, 0.09, 0.09), (0.29, 0.3, 0.32), tuple(COLOUR_RGB[colour_index("white")]), (1.0, 0.82, 0.5),
], dtype=np.float32)
SLOTS = 14


def _frac(x):
    return x - np.floor(x)


def _fade(px, period):
    """1 where a pattern of ``period`` metres is resolved, 0 where a pixel covers it entirely."""
    return np.clip(1.6 - 2.0 * px / period, 0.0, 1.0)


def facade_top(T: BuildingTable, b, u, w):
    """Height of the facade's top edge (roof line) at ``u``: flat, eave band or gable."""
    roof = T.roof[b]
    tri = np.clip(1.0 - np.abs(2.0 * u / np.maximum(w, 1e-3) - 1.0), 0.0, 1.0)
    return T.height[b] + np.where(roof == R["eave"], T.roof_h[b], 0.0) \
        + np.where(roof == R["gable"], T.gable_h[b] * tri, 0.0)


def palette(T: BuildingTable, b, year: int) -> np.ndarray:
    """Per-column colour table (columns, SLOTS, 3)."""
    changed = year >= T.resign_year[b]
    per_col = np.stack([
        COLOUR_RGB[np.where(year >= T.repaint_year[b], T.colour_b[b], T.colour_a[b])],
        COLOUR_RGB[T.trim[b]], COLOUR_RGB[T.shutter_colour[b]],
        COLOUR_RGB[np.where(changed, T.sign_bg_b[b], T.sign_bg_a[b])], COLOUR_RGB[T.glyph_colour[b]],
        COLOUR_RGB[T.roof_colour[b]],
        np.where(T.shop[b][:, None], 0.12, COLOUR_RGB[T.shutter_colour[b]] * 0.6),
    ], axis=1)
    return np.concatenate([per_col, np.broadcast_to(CONSTANTS, (b.size,) + CONSTANTS.shape)], axis=1)


def resolve(table: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Channel-first RGB (3, rows, columns) of ``slot`` (rows, columns) from ``table`` (columns, SLOTS, 3)."""
    ncol = slot.shape[1]
    idx = slot.astype(np.int32) + (np.arange(ncol, dtype=np.int32) * SLOTS)[None, :]
    channels = np.ascontiguousarray(table.reshape(-1, 3).T)
    return np.stack([channels[c][idx] for c in range(3)])


def _material(T, b, u, z, px, seed, slot):
    """Brightness (rows, cols) of the wall material; tiles also set white slots."""
    mat = T.material[b]
    shade = 1.0 + 0.08 * (hash_rows(hash_u32(u * 2.0, seed), z * 2.0) - 0.5) * _fade(px, 0.5)
    for name, period in (("brick", 0.3), ("stone", 0.45), ("wood", 0.22), ("tile", 0.3), ("adobe", 1.0)):
        sel = np.nonzero(mat == M[name])[0]
        if sel.size == 0:
            continue
        uu, zz, ss, f = u[sel], z[:, sel], seed[sel], _fade(px[sel], period)
        if name in ("brick", "stone"):
            h = 0.3 if name == "brick" else 0.45
            bw = 2.0 * h
            row = np.floor(zz / h)
            odd = (row % 2) == 1
            joint = (_frac(zz / h) < 0.12) | np.where(odd, _frac(uu / bw + 0.5) < 0.06, _frac(uu / bw) < 0.06)
            key = np.where(odd, hash_u32(uu / bw + 0.5, ss), hash_u32(uu / bw, ss))
            m = np.where(joint, 1.2 if name == "brick" else 0.75, 0.82 + 0.3 * hash_rows(key, row))
        elif name == "wood":
            vertical = (ss & 1) == 1
            coord = np.where(vertical, uu / 0.3, zz / 0.22)
            board = hash_rows(hash_u32(np.where(vertical, uu / 0.3, 0.0), ss), np.where(vertical, 0.0, zz / 0.22))
            m = np.where(_frac(coord) < 0.14, 0.7, 0.94 + 0.12 * board)
        elif name == "tile":
            iu, iz = np.floor(uu / 0.15), np.floor(zz / 0.15)
            motif = ((iu % 4 - 1.5) ** 2 + (iz % 4 - 1.5) ** 2) < 2.6
            dither = hash_rows(hash_u32(iu, ss), iz) < 0.45
            white = np.where(f > 0.5, ~motif, dither)
            sub = slot[:, sel]
            sub[white] = WHITE
            slot[:, sel] = sub
            continue
        else:  # adobe: blotchy earth render
            m = 0.9 + 0.2 * hash_rows(hash_u32(uu * 1.2, ss + 3), zz * 1.2)
        shade[:, sel] *= 1 + (m - 1) * f
    return shade


def shade_facade(T: BuildingTable, glyphs: np.ndarray, year: int, b, u, w, px, z, glow: bool):
    """Slots, brightness, emission (slots, strength; only if ``glow``) and sign mask of a frame."""
    seed = T.seed[b]
    H, fh, gh = T.height[b], T.floor_h[b], T.ground_h[b]
    slot = np.zeros(z.shape, dtype=np.int8)
    shade = _material(T, b, u, z, px, seed, slot)
    mat, kind, roof = T.material[b], T.window[b], T.roof[b]
    glass_wall = mat == M["glass"]
    if T.ground_wood[b].any():  # machiya: dark slatted wood on the ground floor
        gw = T.ground_wood[b] & (z < gh)
        slot[gw] = WOOD
        shade[gw] = np.broadcast_to(np.where(_frac(u / 0.15) < 0.35, 0.55, 0.9), z.shape)[gw]
    estr = np.zeros(z.shape, dtype=np.float32) if glow else None
    eslot = np.full(z.shape, WARM, dtype=np.int8) if glow else None

    # Column-wise window grid: bays spread evenly between the end margins.
    span = np.maximum(w - 2 * MARGIN, 0.5)
    nbay = np.maximum(np.floor(span / T.bay_w[b]), 1.0)
    bw = span / nbay
    ku = (u - MARGIN) / bw
    bay = np.floor(ku)
    uf = (ku - bay - 0.5) * bw
    auf = np.abs(uf)
    inside = (u > MARGIN) & (u < w - MARGIN)
    ww, wh, sill = T.win_w[b], T.win_h[b], T.sill[b]
    shop_col = T.shop[b]
    door_bay = (hash_u32(seed, 17) % nbay.astype(np.uint32)).astype(np.float32)
    door_col = inside & (bay == door_bay) & (auf < 0.55)

    ground = z < gh
    floor = np.floor((z - gh) / fh)
    zf = np.where(ground, z, z - gh - floor * fh)
    sill_g = np.maximum(sill, 1.0)
    lo = np.where(ground, sill_g, sill)
    hi = np.where(ground, sill_g + np.minimum(wh, gh - sill_g - 0.5), sill + wh)
    fl = floor + 64.0
    present = (z < H - 0.4) & ~(ground & shop_col)
    if (T.win_density[b] < 1).any():
        present &= hash_rows(hash_u32(bay, seed), fl) < T.win_density[b]
    in_rows = present & (zf > lo) & (zf < hi)
    win = in_rows & (inside & (auf < ww / 2))
    arch = kind == W["arch"]
    if arch.any():
        r = ww / 2
        zc = hi - r
        win &= ~(arch & (zf > zc) & (uf ** 2 + (zf - zc) ** 2 > r ** 2))
    frame = present & (zf > lo - 0.16) & (zf < hi + 0.1) & (inside & (auf < ww / 2 + 0.12) & ~glass_wall)
    slot[frame] = TRIM
    shade[frame] = 1.0
    wr, wc = np.nonzero(win)  # window pixels: pane tint, curtains, lattice, lit at night
    hw = hash_rows(hash_u32(bay[wc], seed[wc], 11), fl[wr, wc])
    lattice = (kind[wc] == W["lattice"]) & (_frac(uf[wc] / 0.12) < 0.5)
    slot[wr, wc] = np.where(lattice, WOOD, np.where(hw < 0.18, CURTAIN, GLASS))
    shade[wr, wc] = 0.8 + 0.4 * hw
    if glow:
        lit = hash_rows(hash_u32(bay[wc], seed[wc], 5), fl[wr, wc]) < T.lit_prob[b][wc]
        estr[wr[lit], wc[lit]] = np.where(lattice[lit], 0.2, 0.6 + 0.4 * hw[lit])
        shade[wr[lit], wc[lit]] *= 0.3
    if glass_wall.any():
        gsel = np.nonzero(glass_wall)[0]
        zz, uu = z[:, gsel], u[gsel]
        pane = np.floor(uu / 1.5)
        mull = (_frac(uu / 1.5) < 0.07) | (_frac((zz - gh[gsel]) / fh[gsel]) < 0.1)
        above = ~ground[:, gsel]
        sub_s, sub_h = slot[:, gsel], shade[:, gsel]
        sub_s[above & mull] = TRIM
        sub_h[above & mull] = 0.6
        refl = 0.75 + 0.35 * hash_rows(hash_u32(pane, seed[gsel]), fl[:, gsel])
        sub_h[above & ~mull] = refl[above & ~mull]
        slot[:, gsel], shade[:, gsel] = sub_s, sub_h
        if glow:
            lit_g = above & ~mull & (hash_rows(hash_u32(pane, seed[gsel], 9), fl[:, gsel]) < T.lit_prob[b][gsel] * 0.6)
            sub_e = estr[:, gsel]
            sub_e[lit_g] = 0.5
            estr[:, gsel] = sub_e
    # Shutters beside windows and iron balconies in front of French windows.
    sh_col = T.shutters[b] & inside & (auf >= ww / 2 + 0.12) & (auf < ww)
    if sh_col.any():
        sh = in_rows & ~ground & sh_col
        slot[sh] = SHUTTER
        shade[sh] = np.where(_frac(zf[sh] / 0.12) < 0.3, 0.7, 1.0)
    bal_col = T.balcony[b] & inside & (auf < ww / 2 + 0.35)
    if bal_col.any():
        bars = _frac(u / 0.14) < 0.35
        rail = bal_col & ~ground & (zf < 1.05) & (bars | (zf > 0.95) | (zf < 0.08))
        slot[rail] = IRON
        shade[rail] = 1.0

    # Ground floor: sign band with glyphs, shop window, door; plinth on houses.
    sign_lo, sign_hi = gh - 0.95, gh - 0.25
    changed = year >= T.resign_year[b]
    sign = (shop_col & (u > 0.4) & (u < w - 0.4)) & (z > sign_lo) & (z < sign_hi)
    if sign.any():
        cell = (u - 0.4) / 0.5
        gx = np.floor(_frac(cell) * 6.0).astype(np.int64)
        gi = (hash_u32(cell, seed, changed.astype(np.int64) + 3) % np.uint32(len(glyphs))).astype(np.int64)
        rr, cc = np.nonzero(sign)
        gy = np.floor((sign_hi[cc] - z[rr, cc]) / 0.7 * 7.0).astype(np.int64) - 1
        ok = (gx[cc] < 5) & (gy >= 0) & (gy < 5)
        ink = np.zeros(rr.size, dtype=bool)
        ink[ok] = glyphs[gi[cc[ok]], gy[ok], gx[cc[ok]]]
        slot[rr, cc] = np.where(ink, SIGN_FG, SIGN_BG)
        shade[rr, cc] = 1.0
        if glow:
            estr[rr, cc] = np.where(ink, 0.9, 0.35)
            eslot[rr, cc] = slot[rr, cc]
    display = (shop_col & inside & (auf < bw / 2 - 0.2) & ~door_col) & (z > 0.35) & (z < sign_lo - 0.15)
    if display.any():
        rr, cc = np.nonzero(display)
        interior = hash_rows(hash_u32(uf[cc] * 3.0 + 16, seed[cc]), z[rr, cc] * 3.0)
        slot[display] = INTERIOR
        shade[display] = 0.7 + 0.8 * interior
        if glow:
            estr[display] = 0.3 + interior
    door = door_col & ground & (z < 2.3)
    slot[door] = DOOR
    shade[door] = 1.0
    shade[~shop_col & ~door_col & (z < 0.45)] *= 0.72  # plinth

    # Bands: string course, Kyoto eave, pilasters, cornice, parapet, roof eave, gable trim.
    course = (np.abs(z - gh) < 0.12) & ~glass_wall
    slot[course] = TRIM
    shade[course] = 1.0
    ky = T.mid_eave[b]
    if ky.any():
        band = ky & (z > gh - 0.05) & (z < gh + 0.4)
        slot[band] = ROOF
        shade[band] = np.broadcast_to(np.where(_frac(u / 0.3) < 0.5, 0.8, 1.1), z.shape)[band]
    pil = ((u < 0.3) | (u > w - 0.3)) & ((mat == M["plaster"]) | (mat == M["tile"]))
    pil = np.broadcast_to(pil, z.shape)
    slot[pil] = TRIM
    top_band = (z > H - 0.45) & (z <= H)
    cornice = top_band & (roof == R["cornice"])
    slot[cornice] = TRIM
    shade[cornice] = np.where(z[cornice] < np.broadcast_to(H, z.shape)[cornice] - 0.35, 0.6, 1.0)
    shade[top_band & (roof == R["flat"])] *= 0.85
    above = z > H
    eave = above & (roof == R["eave"])
    slot[eave] = ROOF
    shade[eave] = np.where(_frac((z[eave] - np.broadcast_to(H, z.shape)[eave]) / 0.22) > 0.25, 1.15, 0.8)
    if (roof == R["gable"]).any():
        top = facade_top(T, b, u, w)
        edge = above & (roof == R["gable"]) & (top - z < 0.3)
        slot[edge] = TRIM
        shade[edge] = 1.0
    return slot, shade, (eslot, estr) if glow else None, sign
