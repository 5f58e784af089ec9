"""Ground (road, paint, sidewalk patterns, grass, snow, wet asphalt), sky (gradient, clouds), rain and snow."""

from __future__ import annotations

import numpy as np

from progeo.data.synthetic.cities import COLOUR_RGB, colour_index
from progeo.data.synthetic.citymap import G_PLAZA, G_ROAD, G_SIDEWALK, P_CROSS, P_LINE, CityMap
from progeo.data.synthetic.conditions import Conditions, Lighting
from progeo.data.synthetic.noise import hash01, tex_noise

SNOW = np.array([0.93, 0.94, 0.97], dtype=np.float32)
YELLOW_LINE = np.array([0.9, 0.72, 0.15], dtype=np.float32)
WHITE_LINE = np.array([0.88, 0.88, 0.86], dtype=np.float32)
GRASS = {"spring": (0.36, 0.56, 0.22), "summer": (0.3, 0.48, 0.18), "autumn": (0.48, 0.46, 0.22),
         "winter": (0.42, 0.4, 0.3)}


def _fade(px, period):
    return np.clip(1.6 - 2.0 * px / period, 0.0, 1.0)


def shade_ground(cmap: CityMap, gx, gy, px, cond: Conditions, light: Lighting) -> np.ndarray:
    """Albedo (n, 3) of ground points (gx, gy) seen with a pixel footprint of ``px`` metres."""
    style = cmap.style
    n = cmap.ground.shape[0]
    ix = ((gx + cmap.half) / cmap.res).astype(np.int32)
    iy = ((gy + cmap.half) / cmap.res).astype(np.int32)
    inside = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    flat = np.clip(ix, 0, n - 1) * n + np.clip(iy, 0, n - 1)
    gt = np.where(inside, cmap.ground.reshape(-1)[flat], G_ROAD)
    paint = np.where(inside, cmap.paint.reshape(-1)[flat], 0)
    road = np.array(style.road_colour, dtype=np.float32) / 255.0
    walk = COLOUR_RGB[colour_index(style.sidewalk_colour)]
    line_col = YELLOW_LINE if style.centre_line == "yellow" else WHITE_LINE
    grass = np.array(GRASS[cond.season], np.float32)
    #                  road  walk  plaza        grass  line            crossing         snow  slush
    table = np.stack([road, walk, walk * 0.95, grass, line_col * 0.9, WHITE_LINE * 0.92, SNOW,
                      road * 0.45 + SNOW * 0.55])
    cid = np.array([0, 1, 2, 3], dtype=np.int8)[gt]
    cid[paint == P_LINE] = 4
    cid[paint == P_CROSS] = 5
    patch = tex_noise(gx * 0.3, gy * 0.3)
    grain = hash01(gx * 4.0, gy * 4.0, 3) - 0.5
    shade = 0.85 + 0.22 * patch + 0.12 * grain * _fade(px, 0.25)
    sw = np.nonzero((gt == G_SIDEWALK) | (gt == G_PLAZA))[0]
    if sw.size:
        x, y, f = gx[sw], gy[sw], _fade(px[sw], 0.5)
        pat = style.sidewalk_pattern
        if pat == "calcada":
            wave = np.sin(x * 5.0 + 1.2 * np.sin(y * 3.1)) > 0.55
            m = 0.88 + (np.where(wave, 0.55, 1.0) - 0.88) * f
        elif pat in ("slabs", "pavers", "cobbles"):
            sx, sy = {"slabs": (1.0, 0.6), "pavers": (0.4, 0.2), "cobbles": (0.2, 0.2)}[pat]
            joint = ((x / sx) % 1.0 < 0.08) | ((y / sy) % 1.0 < 0.1)
            m = 0.92 + (np.where(joint, 0.72, 0.9 + 0.18 * hash01(x / sx, y / sy, 9)) - 0.92) * f
        else:
            m = 0.86 + 0.22 * tex_noise(x * 1.5, y * 1.5)
        shade[sw] = m * (0.95 + 0.1 * patch[sw])
    if cond.snow:  # white sidewalks, grey slush on the road
        cid = np.where(gt == G_ROAD, 7, 6).astype(np.int8)
        shade = 0.85 + 0.2 * patch
    elif light.wet > 0:
        shade *= 0.72
    return table[cid] * shade[:, None]


def shade_sky(az, v, cond: Conditions, light: Lighting, seed: int) -> np.ndarray:
    """Sky colour for compass azimuth ``az`` (radians) and elevation slope ``v`` (tan)."""
    t = np.clip(v / 0.9, 0.0, 1.0) ** 0.6
    out = light.horizon + (light.zenith - light.horizon) * t[:, None]
    if light.cloud_cover > 0:
        k = 1.0 / (np.maximum(v, 0.0) + 0.12)
        cx = np.sin(az) * k * 1.6
        cy = np.cos(az) * k * 1.6
        off = (seed % 61) * 1.37
        nz = 0.65 * tex_noise(cx + off, cy) + 0.35 * tex_noise(cx * 2.7, cy * 2.7 + off)
        dens = np.clip((nz - (1.0 - light.cloud_cover)) * 2.5, 0.0, 1.0) * np.clip(v * 6.0, 0.0, 1.0)
        shade = 0.85 + 0.15 * nz
        out = out * (1 - dens[:, None]) + light.cloud * shade[:, None] * dens[:, None]
    if cond.time == "day" and cond.weather == "clear":
        sx, sy = light.sun_dir
        cosang = np.sin(az) * sx + np.cos(az) * sy
        glow = np.clip(cosang, 0.0, 1.0) ** 8 * 0.12
        out = out + glow[:, None]
    if cond.time == "night":
        glow = np.exp(-np.maximum(v, 0.0) * 6.0) * 0.06
        out = out + glow[:, None] * np.array([1.0, 0.7, 0.4], np.float32)
    return out


def weather_overlay(images: np.ndarray, cond: Conditions, seed: int) -> None:
    """Rain streaks and falling snow, in place on images (N, rows, columns, 3) in 0..255."""
    N, S = images.shape[:2]
    r = np.arange(S, dtype=np.float32)[:, None]
    c = np.arange(S, dtype=np.float32)[None, :]
    if cond.weather != "rain" and not cond.snow:
        return
    for i in range(N):
        s = (seed * 131 + i * 7919) % 2**31
        if cond.weather == "rain":
            slant = c + r * 0.22
            lane = np.floor(slant / 1.5)
            phase = hash01(lane, s) * S
            streak = (hash01(lane, np.floor((r + phase) / (S * 0.12)), s + 1) < 0.12) & \
                     ((slant % 1.5) < 0.6)
            images[i][streak] = images[i][streak] * 0.6 + 82.0
            images[i] *= 0.85
        elif cond.snow and cond.weather in ("overcast", "fog"):
            flake = hash01(r, c, s + 2) < 0.012
            images[i][flake] = 235.0
