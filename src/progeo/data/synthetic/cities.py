"""The cities of the synthetic world: names, countries, real positions and architectural styles.

Each :class:`CityStyle` is a *distribution* over streets and buildings, loosely inspired by the
real city: pastel plaster and blue tiles in Lisbon, granite and narrow tiled houses in Porto,
wide brick and glass blocks in Oslo, gabled wooden houses in Bergen, dark timber machiya in Kyoto,
red adobe in Marrakesh. Two cities share a country where possible (Portugal, Norway) so that
country-level classification differs from city-level classification.

Colours are named (:data:`COLOURS`) so that captions can say what a facade looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named sRGB colours (0..255). Buildings, signs and roofs refer to them by index.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (236, 234, 226)), ("cream", (238, 226, 192)), ("pastel yellow", (238, 208, 112)),
    ("ochre", (202, 146, 58)), ("mustard", (212, 168, 48)), ("dusty pink", (220, 158, 156)),
    ("salmon", (232, 138, 108)), ("terracotta", (188, 92, 58)), ("brick red", (148, 60, 44)),
    ("falu red", (128, 36, 28)), ("sky blue", (148, 188, 218)), ("light blue", (182, 206, 226)),
    ("azure blue", (40, 88, 168)), ("mint green", (168, 208, 178)), ("sage green", (136, 158, 118)),
    ("dark green", (38, 78, 54)), ("light grey", (190, 190, 184)), ("grey", (138, 138, 134)),
    ("charcoal", (58, 58, 62)), ("beige", (214, 194, 158)), ("sand", (210, 178, 128)),
    ("brown", (112, 72, 42)), ("dark wood", (64, 42, 28)), ("tan", (178, 138, 94)),
    ("lavender", (188, 168, 208)), ("peach", (244, 188, 140)), ("red ochre", (172, 84, 54)),
    ("rose", (198, 108, 110)), ("teal", (48, 128, 128)), ("navy", (30, 44, 84)),
    ("black", (26, 26, 28)), ("orange", (228, 118, 30)), ("yellow", (248, 208, 40)),
    ("green", (48, 148, 70)), ("blue", (40, 80, 178)), ("red", (198, 40, 40)),
    ("glass blue", (72, 102, 124)), ("copper green", (88, 148, 128)), ("granite grey", (150, 146, 140)),
)
COLOUR_NAMES = tuple(name for name, _ in COLOURS)
COLOUR_RGB = np.array([rgb for _, rgb in COLOURS], dtype=np.float32) / 255.0


def colour_index(name: str) -> int:
    return COLOUR_NAMES.index(name)


MATERIALS = ("plaster", "brick", "wood", "glass", "tile", "stone", "adobe")
ROOFS = ("flat", "cornice", "gable", "eave")
WINDOWS = ("rect", "french", "small", "arch", "lattice")
TREES = ("round", "conifer", "palm", "blossom", "orange")
GLYPH_FAMILIES = ("latin", "nordic", "kana", "arabic")

Weighted = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class CityStyle:
    """How one city looks; every field is sampled per building / street by the map builder."""

    name: str
    country: str
    lat: float
    lon: float
    facade_colours: Weighted
    materials: Weighted
    floors: tuple[int, int]
    floor_h: tuple[float, float]
    lot_width: tuple[float, float]
    block_lengths: tuple[int, ...]  # multiples of 10 m between street centrelines
    street_width: tuple[float, float]  # kerb to kerb plus both sidewalks
    sidewalk: tuple[float, float]
    roofs: Weighted
    roof_colours: Weighted
    windows: Weighted
    bay_width: tuple[float, float]
    trim_colours: Weighted
    shutter_prob: float
    balcony_prob: float
    shop_prob: float
    sign_colours: Weighted
    glyphs: str
    tree: str
    tree_spacing: float
    tree_prob: float
    tree_name: str  # for captions, e.g. "orange trees"
    sidewalk_pattern: str  # calcada | slabs | pavers | cobbles | earth
    sidewalk_colour: str
    road_colour: tuple[int, int, int]
    centre_line: str  # white | yellow
    weather: Weighted  # clear | overcast | fog | rain
    snow_prob: float  # chance of snow in a winter capture
    ground_wood_prob: float = 0.03  # ground floor clad in dark slatted wood (Kyoto machiya)
    mid_eave_prob: float = 0.0  # a small tiled roof between ground and first floor
    pole: str = "lamp"  # lamp | utility (concrete utility poles, no light)

    @property
    def slug(self) -> str:
        return self.name.lower()


CITY_STYLES: dict[str, CityStyle] = {
    s.name: s
    for s in (
        CityStyle(
            "Lisbon", "Portugal", 38.7223, -9.1393,
            facade_colours=(("pastel yellow", 3), ("dusty pink", 2), ("white", 2), ("cream", 2),
                            ("sky blue", 1), ("salmon", 1), ("mint green", 1), ("ochre", 1)),
            materials=(("plaster", 6), ("tile", 3), ("stone", 0.5)),
            floors=(3, 5), floor_h=(3.0, 3.3), lot_width=(6, 11), block_lengths=(40, 50, 60),
            street_width=(10, 13), sidewalk=(1.8, 2.6),
            roofs=(("eave", 5), ("cornice", 3), ("flat", 1)), roof_colours=(("terracotta", 1),),
            windows=(("french", 4), ("rect", 3)), bay_width=(2.4, 3.0),
            trim_colours=(("white", 3), ("cream", 1)), shutter_prob=0.2, balcony_prob=0.6,
            shop_prob=0.5, sign_colours=(("dark green", 1), ("navy", 1), ("dark wood", 1), ("red", 1)),
            glyphs="latin", tree="orange", tree_spacing=12, tree_prob=0.55, tree_name="orange trees",
            sidewalk_pattern="calcada", sidewalk_colour="white", road_colour=(84, 82, 82),
            centre_line="white", weather=(("clear", 6), ("overcast", 2), ("fog", 0.5), ("rain", 1)),
            snow_prob=0.0,
        ),
        CityStyle(
            "Porto", "Portugal", 41.1579, -8.6291,
            facade_colours=(("granite grey", 3), ("azure blue", 2), ("cream", 2), ("ochre", 1),
                            ("white", 2), ("terracotta", 1), ("dark green", 1), ("sage green", 1)),
            materials=(("stone", 3), ("tile", 3), ("plaster", 3)),
            floors=(3, 5), floor_h=(3.0, 3.4), lot_width=(5, 8), block_lengths=(30, 40, 50),
            street_width=(9, 11), sidewalk=(1.6, 2.2),
            roofs=(("gable", 2), ("eave", 4), ("cornice", 2)), roof_colours=(("terracotta", 2), ("charcoal", 1)),
            windows=(("french", 3), ("rect", 3)), bay_width=(1.8, 2.4),
            trim_colours=(("white", 2), ("granite grey", 2)), shutter_prob=0.1, balcony_prob=0.4,
            shop_prob=0.45, sign_colours=(("black", 1), ("dark wood", 1), ("brick red", 1)),
            glyphs="latin", tree="round", tree_spacing=16, tree_prob=0.3, tree_name="plane trees",
            sidewalk_pattern="slabs", sidewalk_colour="granite grey", road_colour=(96, 92, 88),
            centre_line="white", weather=(("clear", 4), ("overcast", 3), ("fog", 1), ("rain", 2)),
            snow_prob=0.0,
        ),
        CityStyle(
            "Oslo", "Norway", 59.9139, 10.7522,
            facade_colours=(("beige", 3), ("light grey", 2), ("cream", 2), ("ochre", 1),
                            ("brick red", 2), ("white", 1), ("charcoal", 1), ("sage green", 1)),
            materials=(("plaster", 4), ("brick", 3), ("glass", 2), ("stone", 1)),
            floors=(4, 7), floor_h=(3.0, 3.4), lot_width=(12, 24), block_lengths=(60, 70, 80),
            street_width=(14, 19), sidewalk=(3.0, 4.0),
            roofs=(("flat", 3), ("cornice", 4), ("eave", 1)), roof_colours=(("charcoal", 2), ("copper green", 1)),
            windows=(("rect", 6), ("small", 1)), bay_width=(2.2, 3.0),
            trim_colours=(("white", 2), ("light grey", 1), ("charcoal", 1)), shutter_prob=0.0,
            balcony_prob=0.15, shop_prob=0.6,
            sign_colours=(("navy", 1), ("black", 1), ("red", 1), ("dark green", 1)),
            glyphs="nordic", tree="round", tree_spacing=10, tree_prob=0.7, tree_name="linden trees",
            sidewalk_pattern="pavers", sidewalk_colour="light grey", road_colour=(74, 74, 78),
            centre_line="yellow", weather=(("clear", 4), ("overcast", 4), ("fog", 0.5), ("rain", 1.5)),
            snow_prob=0.8,
        ),
        CityStyle(
            "Bergen", "Norway", 60.3913, 5.3221,
            facade_colours=(("white", 4), ("falu red", 2), ("pastel yellow", 2), ("ochre", 1),
                            ("light grey", 1), ("mint green", 0.5), ("sky blue", 0.5)),
            materials=(("wood", 7), ("plaster", 2), ("stone", 0.5)),
            floors=(2, 3), floor_h=(2.7, 3.0), lot_width=(6, 10), block_lengths=(30, 40, 50),
            street_width=(9, 12), sidewalk=(1.6, 2.4),
            roofs=(("gable", 6), ("eave", 2)), roof_colours=(("charcoal", 2), ("falu red", 1)),
            windows=(("rect", 5), ("small", 2)), bay_width=(1.6, 2.1),
            trim_colours=(("white", 4), ("charcoal", 1)), shutter_prob=0.0, balcony_prob=0.05,
            shop_prob=0.3, sign_colours=(("black", 1), ("navy", 1), ("dark green", 1)),
            glyphs="nordic", tree="conifer", tree_spacing=18, tree_prob=0.4, tree_name="spruce trees",
            sidewalk_pattern="cobbles", sidewalk_colour="grey", road_colour=(70, 70, 72),
            centre_line="yellow", weather=(("clear", 2), ("overcast", 4), ("fog", 1), ("rain", 4)),
            snow_prob=0.5,
        ),
        CityStyle(
            "Kyoto", "Japan", 35.0116, 135.7681,
            facade_colours=(("dark wood", 4), ("brown", 2), ("cream", 2), ("white", 1),
                            ("beige", 1), ("charcoal", 1)),
            materials=(("wood", 6), ("plaster", 3)),
            floors=(2, 2), floor_h=(2.8, 3.0), lot_width=(6, 9), block_lengths=(40, 50),
            street_width=(8, 10), sidewalk=(1.2, 1.8),
            roofs=(("eave", 7), ("flat", 1)), roof_colours=(("charcoal", 1),),
            windows=(("lattice", 5), ("small", 2), ("rect", 1)), bay_width=(1.5, 2.0),
            trim_colours=(("dark wood", 2), ("charcoal", 1)), shutter_prob=0.0, balcony_prob=0.0,
            shop_prob=0.6, sign_colours=(("navy", 2), ("white", 1), ("red", 1)),
            glyphs="kana", tree="blossom", tree_spacing=16, tree_prob=0.35, tree_name="cherry trees",
            sidewalk_pattern="slabs", sidewalk_colour="light grey", road_colour=(104, 104, 106),
            centre_line="white", weather=(("clear", 4), ("overcast", 3), ("fog", 0.5), ("rain", 2)),
            snow_prob=0.2, ground_wood_prob=0.7, mid_eave_prob=0.85, pole="utility",
        ),
        CityStyle(
            "Marrakesh", "Morocco", 31.6295, -7.9811,
            facade_colours=(("terracotta", 4), ("red ochre", 4), ("dusty pink", 3), ("salmon", 2),
                            ("sand", 2), ("ochre", 1)),
            materials=(("adobe", 8), ("tile", 1)),
            floors=(2, 4), floor_h=(3.0, 3.3), lot_width=(6, 12), block_lengths=(30, 40),
            street_width=(8, 11), sidewalk=(1.4, 2.0),
            roofs=(("flat", 6), ("cornice", 2)), roof_colours=(("red ochre", 1),),
            windows=(("small", 4), ("arch", 4)), bay_width=(2.5, 3.5),
            trim_colours=(("cream", 2), ("teal", 1), ("copper green", 1)), shutter_prob=0.3,
            balcony_prob=0.05, shop_prob=0.6,
            sign_colours=(("dark green", 2), ("white", 1), ("teal", 1), ("red", 1)),
            glyphs="arabic", tree="palm", tree_spacing=14, tree_prob=0.5, tree_name="palm trees",
            sidewalk_pattern="earth", sidewalk_colour="sand", road_colour=(120, 100, 84),
            centre_line="white", weather=(("clear", 8), ("overcast", 1), ("fog", 0.5), ("rain", 0.3)),
            snow_prob=0.0,
        ),
    )
}


def get_style(name: str) -> CityStyle:
    from progeo.errors import ConfigError

    for key, style in CITY_STYLES.items():
        if key.lower() == name.lower():
            return style
    raise ConfigError(f"unknown synthetic city {name!r}; choose one of {', '.join(CITY_STYLES)}")


def pick(rng: np.random.Generator, options: Weighted) -> str:
    """Draw one name from ``(name, weight)`` pairs."""
    u = rng.random() * sum(w for _, w in options)
    for name, w in options:
        u -= w
        if u < 0:
            return name
    return options[-1][0]


def glyph_set(family: str, count: int = 24) -> np.ndarray:
    """``count`` 5x5 bitmaps that look like letters of a writing system (bool, (count, 5, 5)).

    Built from strokes: Latin/Nordic letters from bars and diagonals, kana from short hooks,
    Arabic-like script from a connected baseline with ascenders and dots.
    """
    rng = np.random.default_rng(GLYPH_FAMILIES.index(family) + 101)
    out = np.zeros((count, 5, 5), dtype=bool)
    for g in out:
        if family in ("latin", "nordic"):
            for _ in range(rng.integers(2, 4)):
                kind = rng.integers(0, 4)
                if kind == 0:
                    g[:, rng.choice([0, 2, 4])] = True
                elif kind == 1:
                    g[rng.choice([0, 2, 4]), :] = True
                elif kind == 2:
                    g[np.arange(5), np.arange(5) if rng.random() < 0.5 else np.arange(4, -1, -1)] = True
                else:
                    g[1:4, 1:4] = True
                    g[2, 2] = False
            if family == "nordic" and rng.random() < 0.25:
                g[np.arange(5), np.arange(4, -1, -1)] = True
        elif family == "kana":
            r = rng.integers(0, 3)
            g[r, :] = True
            g[r:, rng.integers(1, 4)] = True
            if rng.random() < 0.6:
                g[4, :3] = True
            if rng.random() < 0.5:
                g[[1, 2, 3], [3, 3, 4]] = True
        else:  # arabic: connected baseline, ascenders, dots
            g[3, :] = True
            for c in rng.choice(5, size=rng.integers(1, 3), replace=False):
                g[0:3, c] = True
            if rng.random() < 0.6:
                g[rng.choice([1, 4]) if rng.random() < 0.5 else 4, rng.integers(0, 5)] = True
    return out
