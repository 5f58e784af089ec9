"""Per-building facade parameters, sampled from a city style and stored as a struct of arrays.

Every building is unique: its colour, material, window grid, roof line, shop sign and the years
in which it is repainted or gets a new sign are drawn once from the city style, and its texture
noise is seeded by its own ``seed``. Index 0 of every array is "no building".
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from progeo.data.synthetic.cities import (
    MATERIALS, ROOFS, WINDOWS, CityStyle, colour_index, pick,
)

MATERIAL_COLOURS = {
    "brick": (("brick red", 3), ("terracotta", 1), ("charcoal", 0.7), ("brown", 0.5)),
    "glass": (("glass blue", 3), ("charcoal", 1), ("light grey", 1)),
    "stone": (("granite grey", 3), ("beige", 1), ("light grey", 1)),
    "tile": (("azure blue", 3), ("teal", 1), ("mint green", 1), ("copper green", 0.5), ("white", 0.6)),
}
WINDOW_SIZES = {  # win_w, win_h, sill
    "rect": ((0.9, 1.3), (1.3, 1.7), 0.9),
    "french": ((0.9, 1.1), (2.0, 2.3), 0.25),
    "small": ((0.6, 0.9), (0.8, 1.1), 1.1),
    "arch": ((0.8, 1.1), (1.4, 1.8), 0.8),
    "lattice": ((1.2, 1.6), (1.0, 1.4), 0.9),
}
NEVER = 9999


@dataclass
class BuildingTable:
    """Struct of arrays over buildings; after :meth:`finish` every field is a numpy array."""

    x0: list
    x1: list
    y0: list
    y1: list
    height: list
    floor_h: list
    ground_h: list
    material: list
    colour_a: list
    colour_b: list
    trim: list
    roof: list
    roof_colour: list
    roof_h: list
    gable_h: list
    window: list
    bay_w: list
    win_w: list
    win_h: list
    sill: list
    win_density: list
    shutters: list
    shutter_colour: list
    balcony: list
    shop: list
    sign_bg_a: list
    sign_bg_b: list
    glyph_colour: list
    repaint_year: list
    resign_year: list
    lit_prob: list
    ground_wood: list
    mid_eave: list
    seed: list

    @classmethod
    def empty(cls) -> "BuildingTable":
        # Row 0 stands for "no building": harmless values so that vectorized code never divides by 0.
        dummy = {f.name: 0 for f in fields(cls)}
        dummy.update(floor_h=3.0, ground_h=4.0, bay_w=2.0, win_w=1.0, win_h=1.0, x1=1.0, y1=1.0, win_density=1.0,
                     repaint_year=NEVER, resign_year=NEVER)
        t = cls(**{k: [v] for k, v in dummy.items()})
        t.parks = []
        return t

    def add(self, spec: dict) -> int:
        for f in fields(self):
            getattr(self, f.name).append(spec[f.name])
        return len(self.x0) - 1

    def finish(self) -> "BuildingTable":
        ints = {"material", "colour_a", "colour_b", "trim", "roof", "roof_colour", "window",
                "shutter_colour", "sign_bg_a", "sign_bg_b", "glyph_colour", "repaint_year",
                "resign_year"}
        bools = {"shutters", "balcony", "shop", "ground_wood", "mid_eave"}
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "seed":
                out[f.name] = np.array(v, dtype=np.uint32)
            elif f.name in ints:
                out[f.name] = np.array(v, dtype=np.int32)
            elif f.name in bools:
                out[f.name] = np.array(v, dtype=bool)
            else:
                out[f.name] = np.array(v, dtype=np.float32)
        table = BuildingTable(**out)
        table.parks = list(getattr(self, "parks", []))
        return table

    def __len__(self) -> int:
        return len(self.x0)


def _colour(rng, options) -> int:
    return colour_index(pick(rng, options))


def sample_building(rng: np.random.Generator, style: CityStyle, box) -> dict:
    """Draw one building's facade parameters for footprint ``box = (x0, x1, y0, y1)``."""
    material = pick(rng, style.materials)
    palette = MATERIAL_COLOURS.get(material, style.facade_colours)
    colour_a = _colour(rng, palette)
    colour_b = _colour(rng, palette)
    if colour_b == colour_a:
        colour_b = _colour(rng, style.facade_colours)
    roof = pick(rng, style.roofs)
    roof_h = float(rng.uniform(0.8, 1.6)) if style.mid_eave_prob == 0 else float(rng.uniform(1.3, 2.0))
    floors = int(rng.integers(style.floors[0], style.floors[1] + 1)) + (2 if rng.random() < 0.05 else 0)
    floor_h = float(rng.uniform(*style.floor_h))
    ground_h = floor_h + float(rng.uniform(0.3, 0.8))
    height = ground_h + (floors - 1) * floor_h + (0.7 if roof in ("flat", "cornice") else 0.25)
    window = "rect" if material == "glass" else pick(rng, style.windows)
    (wlo, whi), (hlo, hhi), sill = WINDOW_SIZES[window]
    win_w = float(rng.uniform(wlo, whi))
    bay_w = max(float(rng.uniform(*style.bay_width)), win_w + 0.6)
    width = max(box[1] - box[0], box[3] - box[2])
    shop = bool(rng.random() < style.shop_prob)
    sign_bg_a = _colour(rng, style.sign_colours)
    sign_bg_b = _colour(rng, style.sign_colours + (("yellow", 0.5), ("orange", 0.5)))
    return dict(
        x0=box[0], x1=box[1], y0=box[2], y1=box[3], height=height, floor_h=floor_h,
        ground_h=ground_h, material=MATERIALS.index(material), colour_a=colour_a, colour_b=colour_b,
        trim=_colour(rng, style.trim_colours), roof=ROOFS.index(roof),
        roof_colour=_colour(rng, style.roof_colours), roof_h=roof_h,
        gable_h=float(min(rng.uniform(2.0, 3.5), 0.45 * width)) if roof == "gable" else 0.0,
        window=WINDOWS.index(window), bay_w=bay_w, win_w=win_w,
        win_h=float(rng.uniform(hlo, hhi)), sill=sill,
        win_density=0.6 if style.name == "Marrakesh" else 1.0,
        shutters=bool(rng.random() < style.shutter_prob),
        shutter_colour=_colour(rng, (("dark green", 2), ("brown", 1), ("teal", 1), ("white", 0.5))),
        balcony=bool(rng.random() < style.balcony_prob and window in ("french", "rect")),
        shop=shop, sign_bg_a=sign_bg_a, sign_bg_b=sign_bg_b,
        glyph_colour=_colour(rng, (("white", 3), ("yellow", 1), ("cream", 1))),
        repaint_year=int(rng.integers(2010, 2025)) if rng.random() < 0.35 else NEVER,
        resign_year=int(rng.integers(2010, 2025)) if rng.random() < 0.45 else NEVER,
        lit_prob=float(rng.uniform(0.25, 0.6)), ground_wood=bool(rng.random() < style.ground_wood_prob),
        mid_eave=bool(rng.random() < style.mid_eave_prob), seed=int(rng.integers(1, 2**31)),
    )
