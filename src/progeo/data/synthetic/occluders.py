"""Occluders: cars, vans and pedestrians standing between the camera and the facades.

They are placed on the map (vehicles on the road aligned with the street, pedestrians on
sidewalks), so every view of a panorama sees the same ones, and drawn as depth-tested
silhouettes after the scene. ``light`` scatters a few at 4-30 m around a capture; ``heavy``
puts four to seven right in front of each camera (2.5-8 m), hiding much of the facades.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from progeo.data.synthetic.citymap import G_ROAD, CityMap

CAR, VAN, PEDESTRIAN = 0, 1, 2
KIND_NAMES = ("car", "van", "pedestrian")
PAINT = np.array([(0.92, 0.92, 0.9), (0.1, 0.1, 0.11), (0.55, 0.56, 0.58), (0.72, 0.73, 0.75),
                  (0.7, 0.12, 0.1), (0.12, 0.22, 0.5), (0.15, 0.32, 0.22), (0.95, 0.78, 0.1)],
                 dtype=np.float32)
CLOTHES = np.array([(0.1, 0.1, 0.12), (0.2, 0.25, 0.45), (0.6, 0.15, 0.15), (0.85, 0.85, 0.82),
                    (0.35, 0.3, 0.25), (0.2, 0.4, 0.3), (0.75, 0.6, 0.2), (0.45, 0.45, 0.5)],
                   dtype=np.float32)


@dataclass
class Occluders:
    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray  # vehicle axis, radians (compass)
    kind: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    colour: np.ndarray  # (n, 3) body / shirt
    colour2: np.ndarray  # (n, 3) trousers / unused

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def empty() -> "Occluders":
        z = np.zeros(0, dtype=np.float32)
        return Occluders(z, z, z, z.astype(np.int8), z, z, z, np.zeros((0, 3), np.float32),
                         np.zeros((0, 3), np.float32))


def _street_axis(cmap: CityMap, x: float, y: float) -> float:
    """Compass angle of the street at (x, y): 90 if the road runs east-west, else 0."""
    ix, iy = cmap.cell(np.array([x]), np.array([y]))
    r = int(5.0 / cmap.res)
    n = cmap.ground.shape[0]
    run_x = (cmap.ground[max(ix[0] - r, 0):min(ix[0] + r, n), iy[0]] == G_ROAD).sum()
    run_y = (cmap.ground[ix[0], max(iy[0] - r, 0):min(iy[0] + r, n)] == G_ROAD).sum()
    return math.pi / 2 if run_x >= run_y else 0.0


def make_occluders(rng: np.random.Generator, cmap: CityMap, cams, level: str) -> Occluders:
    """Occluders for one capture (``cams``: the capture's cameras)."""
    if level == "none":
        return Occluders.empty()
    rows = []
    if level == "light":
        c = cams[0]
        wanted = int(rng.integers(0, 4))
        centres = [(c.x, c.y, rng.uniform(0, 2 * math.pi), 4.0, 30.0) for _ in range(wanted)]
    else:
        centres = []
        for c in cams:
            h = math.radians(c.heading)
            for _ in range(int(rng.integers(4, 8))):
                centres.append((c.x, c.y, h + rng.uniform(-0.55, 0.55), 2.5, 8.0))
    for cx, cy, ang, dmin, dmax in centres:
        for _ in range(4):
            a = ang + rng.uniform(-0.15, 0.15)
            d = rng.uniform(dmin, dmax)
            x, y = cx + d * math.sin(a), cy + d * math.cos(a)
            ix, iy = cmap.cell(np.array([x]), np.array([y]))
            if cmap.building[ix[0], iy[0]] != 0:
                continue
            on_road = cmap.ground[ix[0], iy[0]] == G_ROAD
            if on_road and rng.random() < 0.75 and d > 3.5:
                kind = VAN if rng.random() < 0.2 else CAR
                length = rng.uniform(5.0, 6.0) if kind == VAN else rng.uniform(3.8, 4.8)
                width = rng.uniform(1.7, 2.0)
                height = rng.uniform(2.0, 2.5) if kind == VAN else rng.uniform(1.4, 1.6)
                axis = _street_axis(cmap, x, y) + rng.normal(0, 0.05)
                col, col2 = PAINT[rng.integers(len(PAINT))], PAINT[1]
            else:
                kind, length, width, height, axis = PEDESTRIAN, 0.3, 0.5, rng.uniform(1.55, 1.9), 0.0
                col, col2 = CLOTHES[rng.integers(len(CLOTHES))], CLOTHES[rng.integers(len(CLOTHES))]
            rows.append((x, y, axis, kind, length, width, height, *col, *col2))
            break
    if not rows:
        return Occluders.empty()
    a = np.array(rows, dtype=np.float32)
    return Occluders(a[:, 0], a[:, 1], a[:, 2], a[:, 3].astype(np.int8), a[:, 4], a[:, 5], a[:, 6],
                     a[:, 7:10], a[:, 10:13])


def draw_occluders(img, depth, cam, f: float, occ: Occluders, light_rgb, night: bool,
                   gain: float = 1.0) -> list[int]:
    """Draw ``occ`` into one view (``img`` (S, S, 3), ``depth`` (S, S)); returns kinds drawn.

    ``light_rgb`` scales albedo to the image's units; lamps emit ``gain`` times their colour.
    """
    S = img.shape[0]
    h = math.radians(cam.heading)
    fwd = (math.sin(h), math.cos(h))
    right = (math.cos(h), -math.sin(h))
    tp = math.tan(math.radians(cam.pitch))
    rx, ry = occ.x - cam.x, occ.y - cam.y
    dep = rx * fwd[0] + ry * fwd[1]
    lat = rx * right[0] + ry * right[1]
    drawn = []
    for i in np.argsort(-dep):
        d = float(dep[i])
        if d < 0.8:
            continue
        kind = int(occ.kind[i])
        ax = (math.sin(occ.angle[i]), math.cos(occ.angle[i]))
        side = abs(ax[0] * right[0] + ax[1] * right[1])
        app_w = float(occ.length[i]) * side + float(occ.width[i]) * math.sqrt(max(0.0, 1 - side * side))
        xc = S / 2 + f * float(lat[i]) / d
        hw = f * app_w / 2 / d

        def row(z):
            v = (z - cam.height) / d
            return S / 2 - 0.5 - f * (v - tp) / (1 + v * tp)

        r_top, r_bot = row(float(occ.height[i])), row(0.0)
        c0, c1 = int(max(math.floor(xc - hw), 0)), int(min(math.ceil(xc + hw), S))
        q0, q1 = int(max(math.floor(r_top), 0)), int(min(math.ceil(r_bot), S))
        if c0 >= c1 or q0 >= q1:
            continue
        cols = (np.arange(c0, c1) + 0.5 - (xc - hw)) / max(2 * hw, 1e-6)  # 0..1 left to right
        rows_ = (r_bot - (np.arange(q0, q1) + 0.5)) / max(r_bot - r_top, 1e-6)  # 0 bottom .. 1 top
        a, b = np.meshgrid(cols, rows_)
        m, col = _silhouette(kind, a, b, side, occ, i, night)
        m &= depth[q0:q1, c0:c1] > d
        if not m.any():
            continue
        img[q0:q1, c0:c1][m] = col[m] * light_rgb + (_lights(kind, a, b, side)[m] * gain if night else 0.0)
        depth[q0:q1, c0:c1][m] = d
        drawn.append(kind)
    return drawn


def _silhouette(kind, a, b, side, occ: Occluders, i, night):
    body = occ.colour[i]
    col = np.broadcast_to(body, a.shape + (3,)).copy()
    if kind == PEDESTRIAN:
        h = float(occ.height[i])
        xm, zm = (a - 0.5) * float(occ.width[i]), b * h
        head = xm ** 2 + (zm - (h - 0.12)) ** 2 < 0.11 ** 2
        torso = (np.abs(xm) < 0.2) & (zm > 0.46 * h) & (zm < h - 0.2)
        legs = (zm <= 0.48 * h) & (np.abs(xm) > 0.02) & (np.abs(xm) < 0.17)
        arms = (np.abs(xm) >= 0.19) & (np.abs(xm) < 0.25) & (zm > 0.5 * h) & (zm < h - 0.28)
        col[head] = (0.62, 0.46, 0.36)
        col[legs] = occ.colour2[i]
        return head | torso | legs | arms, col
    van = kind == VAN
    belt = 0.5 if not van else 0.62
    inset = 0.04 + 0.12 * side if not van else 0.04
    cabin = (b >= belt) & (a > inset) & (a < 1 - inset)
    mask = (b < belt) & (b > 0.08) | cabin
    glass = cabin & (b > belt + 0.06) & (b < 0.93) & (a > inset + 0.04) & (a < 1 - inset - 0.04)
    col[glass] = (0.14, 0.17, 0.21)
    col[(b < 0.2)] *= 0.6
    if side > 0.5:
        for wc in (0.18, 0.82):
            wheel = ((a - wc) / 0.09) ** 2 + ((b - 0.13) / 0.13) ** 2 < 1
            col[wheel] = 0.05
            mask |= wheel
    return mask, col


def _lights(kind, a, b, side):
    out = np.zeros(a.shape + (3,), dtype=np.float32)
    if kind != PEDESTRIAN and side < 0.6:
        lamp = (b > 0.28) & (b < 0.4) & ((a < 0.2) | (a > 0.8)) & (a > 0.05) & (a < 0.95)
        out[lamp] = (1.2, 1.0, 0.8)
    return out
